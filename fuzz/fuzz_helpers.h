/*
 * fuzz_helpers.h -- what every ksalloc fuzz target shares: the libFuzzer entry points, a check
 * macro that NDEBUG cannot switch off, and the one way of turning input bytes into a run (decode
 * a config for the given entries with ks_decode_config, decode ops with ks_decode_op, step them
 * through the engine with a verifier session reset for each input).
 *
 * Byte format of an allocator input (fuzz_alloc_*, the single-threaded part of fuzz_plugin, and
 * `ksalloc replay --fuzz-input`): [config bytes as ks_decode_config reads them][op bytes as
 * ks_decode_op reads them]. Nothing else is read, so `ksalloc replay --fuzz-input FILE
 * --allocator NAME` replays any such input exactly.
 *
 * Any verifier fault aborts the process at once (after printing the fault and the commands
 * that reproduce it), so libFuzzer saves the input and the regression driver fails.
 */
#ifndef KS_FUZZ_HELPERS_H
#define KS_FUZZ_HELPERS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "catalogue.h"
#include "verifier.h"
#include "workload.h"

/* The libFuzzer interface (also driven by fuzz/regression_driver.c). */
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

/* KS_FUZZ_SELF_CHECK_EVERY_OPS and KS_FUZZ_MAX_FRAME_BYTES: harness/workload.h (shared with
 * `ksalloc replay --fuzz-input`). */

/* A copy of entry whose max_frame_bytes is at most KS_FUZZ_MAX_FRAME_BYTES; decode against it.
 * Returns copy. */
const ks_allocator_entry *ks_fuzz_capped_entry(const ks_allocator_entry *entry, ks_allocator_entry *copy);

/* Prints "ksalloc-fuzz: FAILED at file:line: <condition>: <message>", the reproduce commands
 * and aborts. */
_Noreturn void ks_fuzz_fail(const char *file, int line, const char *condition, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* Always on, NDEBUG or not: a fuzz target that stops checking in release builds finds nothing. */
#define KS_FUZZ_CHECK(condition, ...)                                                                   \
    do {                                                                                                \
        if (!(condition))                                                                               \
            ks_fuzz_fail(__FILE__, __LINE__, #condition, __VA_ARGS__);                                  \
    } while (0)

/* Names the target and the allocator spec ("pool", "plugin:/x.so", or NULL when the input is not
 * a single-allocator one) for the reproduce lines printed on failure. Call from
 * LLVMFuzzerInitialize. */
void ks_fuzz_set_identity(const char *target, const char *allocator_spec);

/* The calling thread's verifier session, whose first fault aborts the process (printing it
 * first): begin at the start of an input, end when every instance opened on it is deleted (end
 * resets the session for the next input and aborts if an instance is still open). */
ks_verifier *ks_fuzz_verifier_begin(void);
void ks_fuzz_verifier_end(ks_verifier *verifier);

/* Opens an engine over config with verifier (may be NULL). false when an allocator refused the
 * decoded framing, which is its right (the verifier has already judged the write-back); any
 * other failure is a harness bug and aborts. */
bool ks_fuzz_engine_open(const ks_workload_config *config, ks_verifier *verifier, ks_engine **engine);

/* One op; an engine error aborts (the decoder only produces ops valid for the view). */
void ks_fuzz_engine_step(ks_engine *engine, const ks_op *op, bool *allocated);

/* Closes the engine (frees what is live, deletes every instance); an error aborts. */
void ks_fuzz_engine_close(ks_engine *engine);


/* The allocator input format above, run on entry under the thread's verifier session. */
void ks_fuzz_run_allocator_input(const uint8_t *data, size_t size, const ks_allocator_entry *entry);

#endif
