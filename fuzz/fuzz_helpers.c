/*
 * fuzz_helpers.c -- the decoding and running shared by every fuzz target (see fuzz_helpers.h).
 *
 * Design. A target is a thin file: it picks the entries and calls into here, so every target
 * reads bytes the same way (ks_decode_config, ks_decode_op from harness/decode.c) and judges a
 * run the same way (one verifier session per input, reset rather than remade between inputs;
 * faults abort). Nothing here keeps state from one input to the next except the target's
 * identity, which is set once and only read, and the session's memory, which a reset empties,
 * so an input's outcome never depends on the inputs run before it -- the property that makes a
 * saved crash replay alone. Failure goes through abort() rather than a return code because libFuzzer,
 * AFL++ and honggfuzz all treat a deadly signal as a crash and save the input; the message is
 * printed first, on stderr, in one block, with the commands that reproduce it.
 * Thread safety: the identity is written before any input runs; the session is per thread;
 * everything else is per call.
 */
#include "fuzz_helpers.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *fuzz_target_name = "fuzz";
static const char *fuzz_allocator_spec; /* NULL: the input is not a single-allocator one */

void ks_fuzz_set_identity(const char *target, const char *allocator_spec)
{
    fuzz_target_name = target != NULL ? target : "fuzz";
    fuzz_allocator_spec = allocator_spec;
}

static void print_reproduce(void)
{
    fprintf(stderr, "ksalloc-fuzz: reproduce with the regression driver (make fuzz-replay builds it):\n"
                    "ksalloc-fuzz:   build/<mode>/fuzz/regress_%s INPUT\n",
            fuzz_target_name);
    if (fuzz_allocator_spec != NULL)
        fprintf(stderr, "ksalloc-fuzz: or with the CLI:\nksalloc-fuzz:   ksalloc replay --fuzz-input INPUT --allocator %s\n",
                fuzz_allocator_spec);
}

_Noreturn void ks_fuzz_fail(const char *file, int line, const char *condition, const char *fmt, ...)
{
    char message[1024];
    va_list args;
    va_start(args, fmt);
    vsnprintf(message, sizeof message, fmt, args);
    va_end(args);
    fprintf(stderr, "ksalloc-fuzz: %s: FAILED at %s:%d: %s: %s\n", fuzz_target_name, file, line, condition, message);
    print_reproduce();
    fflush(stderr);
    abort();
}

/* The first fault ends the run: later faults are usually consequences of it. */
static void abort_on_fault(void *arg, const ks_fault *fault)
{
    (void)arg;
    fprintf(stderr, "ksalloc-fuzz: %s: verifier fault %s: allocator '%s' instance %u op %llu address %#llx: %s\n",
            fuzz_target_name, ks_fault_kind_name(fault->kind), fault->allocator ? fault->allocator : "?",
            fault->instance, (unsigned long long)fault->op_index, (unsigned long long)fault->address,
            fault->message);
    print_reproduce();
    fflush(stderr);
    abort();
}

/* The thread's verifier session: made by the first input, reset by ks_fuzz_verifier_end after
 * each one (ks_verifier_reset), so that an input pays for no session, shadow slab or instance
 * record of its own -- under ASan, whose quarantine makes each freshly allocated byte a new page
 * for the first few hundred MB, those were a third of a small input's cost. A reset session is
 * indistinguishable from a new one (op and instance numbers restart at 0), so an input still
 * runs as if alone. */
static _Thread_local ks_verifier *fuzz_session;

ks_verifier *ks_fuzz_verifier_begin(void)
{
    if (fuzz_session != NULL)
        return fuzz_session;
    ks_verifier_options options = {
        .self_check_every_ops = KS_FUZZ_SELF_CHECK_EVERY_OPS,
        .max_faults_kept = 1,
        .on_fault = abort_on_fault,
    };
    ks_error err;
    ks_error_clear(&err);
    NTSTATUS status = ks_verifier_create(&options, &fuzz_session, &err);
    KS_FUZZ_CHECK(NT_SUCCESS(status), "ks_verifier_create: %s", err.message);
    return fuzz_session;
}

void ks_fuzz_verifier_end(ks_verifier *verifier)
{
    ks_error err;
    ks_error_clear(&err);
    NTSTATUS status = ks_verifier_reset(verifier, &err);
    KS_FUZZ_CHECK(NT_SUCCESS(status), "the input left its verifier session in use: %s", err.message);
}

bool ks_fuzz_engine_open(const ks_workload_config *config, ks_verifier *verifier, ks_engine **engine)
{
    ks_engine_options options = {.verifier = verifier};
    ks_error err;
    ks_error_clear(&err);
    NTSTATUS status = ks_engine_open(config, &options, engine, &err);
    if (NT_SUCCESS(status))
        return true;
    /* The allocator declined the framing (or could not get its memory): not a bug by contract.
     * A config the engine itself rejects (its messages start "engine:") means the decoder built
     * an invalid one, which is a harness bug. */
    KS_FUZZ_CHECK(strncmp(err.message, "engine:", 7) != 0, "ks_engine_open: %s", err.message);
    return false;
}

void ks_fuzz_engine_step(ks_engine *engine, const ks_op *op, bool *allocated)
{
    ks_error err;
    ks_error_clear(&err);
    NTSTATUS status = ks_engine_step(engine, op, allocated, &err);
    KS_FUZZ_CHECK(NT_SUCCESS(status), "ks_engine_step (kind %u pin %u arg %u): %s", op->kind, op->pin,
                  (unsigned)op->arg, err.message);
}

void ks_fuzz_engine_close(ks_engine *engine)
{
    ks_error err;
    ks_error_clear(&err);
    NTSTATUS status = ks_engine_close(engine, &err);
    KS_FUZZ_CHECK(NT_SUCCESS(status), "ks_engine_close: %s", err.message);
}

const ks_allocator_entry *ks_fuzz_capped_entry(const ks_allocator_entry *entry, ks_allocator_entry *copy)
{
    *copy = *entry;
    if (copy->max_frame_bytes == 0 || copy->max_frame_bytes > KS_FUZZ_MAX_FRAME_BYTES)
        copy->max_frame_bytes = KS_FUZZ_MAX_FRAME_BYTES;
    return copy;
}

void ks_fuzz_run_allocator_input(const uint8_t *data, size_t size, const ks_allocator_entry *entry)
{
    ks_byte_reader reader = {.data = data, .size_bytes = size, .offset = 0};
    ks_allocator_entry capped;
    const ks_allocator_entry *const entries[] = {ks_fuzz_capped_entry(entry, &capped)};
    ks_workload_config config;
    ks_decode_config(&reader, entries, 1, &config);
    ks_decode_fit_heaps(&config, size - reader.offset);
    ks_verifier *verifier = ks_fuzz_verifier_begin();
    ks_engine *engine = NULL;
    if (ks_fuzz_engine_open(&config, verifier, &engine)) {
        ks_live_view view;
        ks_op op;
        ks_engine_view(engine, &view);
        while (ks_decode_op(&reader, &view, &op)) {
            ks_fuzz_engine_step(engine, &op, NULL);
            ks_engine_view(engine, &view);
        }
        ks_fuzz_engine_close(engine); /* Free of what is live, then DeleteAllocator: leak checks */
    }
    ks_fuzz_verifier_end(verifier);
}
