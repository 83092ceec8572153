/*
 * fuzz_trace.c -- the trace parser (harness/trace.c), the one parser of outside text ksalloc has:
 * `ksalloc replay FILE` reads whatever file a user hands it.
 *
 * Checks: ks_trace_parse never crashes, never reads past the text (the input is not
 * NUL-terminated), never leaks (LeakSanitizer at exit); a refusal names a line
 * ("fuzz-input:LINE: what") unless it is out of memory; an accepted trace is well formed (1 to
 * KS_MAX_PINS pins, heap indices in range, alignment masks 2^k - 1, every op's pin in range) and
 * survives a round trip: written back with the trace writer and parsed again it yields the same
 * config, profile, seed and ops, so the writer and the parser agree on the format.
 */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_helpers.h"
#include "trace.h"

#define TRACE_SOURCE "fuzz-input"

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    ks_fuzz_set_identity("fuzz_trace", NULL);
    return 0;
}

static void check_refusal(NTSTATUS status, const ks_error *err)
{
    if (status == STATUS_INSUFFICIENT_RESOURCES)
        return;
    size_t prefix = strlen(TRACE_SOURCE ":");
    KS_FUZZ_CHECK(strncmp(err->message, TRACE_SOURCE ":", prefix) == 0 && isdigit((unsigned char)err->message[prefix]),
                  "a refused trace must name its line as '" TRACE_SOURCE ":N:', got '%s'", err->message);
}

static void check_well_formed(const ks_trace *trace)
{
    const ks_workload_config *config = &trace->config;
    KS_FUZZ_CHECK(config->pin_count >= 1 && config->pin_count <= KS_MAX_PINS, "%u pins accepted", config->pin_count);
    KS_FUZZ_CHECK(config->heap_count <= KS_MAX_HEAPS, "%u heaps accepted", config->heap_count);
    for (unsigned i = 0; i < config->pin_count; i++) {
        const ks_pin_config *pin = &config->pins[i];
        KS_FUZZ_CHECK(pin->heap_index >= -1 && pin->heap_index < (int)config->heap_count, "pin %u heap %d of %u", i,
                      pin->heap_index, config->heap_count);
        KS_FUZZ_CHECK(ks_framing_align_valid(&pin->framing), "pin %u align mask 0x%x accepted", i,
                      (unsigned)pin->framing.FileAlignment);
        KS_FUZZ_CHECK(memchr(pin->allocator, '\0', sizeof pin->allocator) != NULL, "pin %u name unterminated", i);
    }
    for (size_t k = 0; k < trace->op_count; k++)
        KS_FUZZ_CHECK(trace->ops[k].pin < config->pin_count, "op %zu names pin %u of %u", k, trace->ops[k].pin,
                      config->pin_count);
}

static bool configs_equal(const ks_workload_config *left, const ks_workload_config *right)
{
    if (left->pin_count != right->pin_count || left->heap_count != right->heap_count)
        return false;
    if (memcmp(left->heap_bytes, right->heap_bytes, left->heap_count * sizeof left->heap_bytes[0]) != 0)
        return false;
    for (unsigned i = 0; i < left->pin_count; i++) {
        const ks_pin_config *a = &left->pins[i], *b = &right->pins[i];
        if (strcmp(a->allocator, b->allocator) != 0 || a->heap_index != b->heap_index ||
            memcmp(&a->framing, &b->framing, sizeof a->framing) != 0)
            return false;
    }
    return true;
}

/* Writes trace with the trace writer into memory; NULL when the writer refuses it. */
static char *write_back(const ks_trace *trace, size_t *text_bytes)
{
    char *text = NULL;
    FILE *stream = open_memstream(&text, text_bytes);
    KS_FUZZ_CHECK(stream != NULL, "open_memstream failed");
    ks_trace_writer *writer = NULL;
    ks_error err;
    ks_error_clear(&err);
    NTSTATUS status = ks_trace_writer_open_stream(stream, &trace->config, trace->profile, trace->seed, &writer, &err);
    KS_FUZZ_CHECK(NT_SUCCESS(status), "the writer refuses a config the parser accepted: %s", err.message);
    for (size_t k = 0; k < trace->op_count; k++)
        KS_FUZZ_CHECK(NT_SUCCESS(ks_trace_writer_op(writer, &trace->ops[k], trace->allocated[k] != 0)),
                      "writing op %zu failed", k);
    KS_FUZZ_CHECK(NT_SUCCESS(ks_trace_writer_close(writer, &err)), "closing the writer: %s", err.message);
    fclose(stream);
    return text;
}

static void check_round_trip(const ks_trace *trace)
{
    size_t text_bytes = 0;
    char *text = write_back(trace, &text_bytes);
    ks_trace again;
    ks_error err;
    ks_error_clear(&err);
    NTSTATUS status = ks_trace_parse(text, text_bytes, "round-trip", &again, &err);
    KS_FUZZ_CHECK(NT_SUCCESS(status), "the parser refuses what the writer wrote: %s\n--- written ---\n%.2000s", err.message,
                  text);
    KS_FUZZ_CHECK(configs_equal(&trace->config, &again.config), "config changed in the round trip");
    KS_FUZZ_CHECK(strcmp(trace->profile, again.profile) == 0 && trace->seed == again.seed,
                  "profile/seed changed in the round trip");
    KS_FUZZ_CHECK(again.op_count == trace->op_count, "%zu ops became %zu", trace->op_count, again.op_count);
    for (size_t k = 0; k < trace->op_count; k++)
        KS_FUZZ_CHECK(memcmp(&trace->ops[k], &again.ops[k], sizeof trace->ops[k]) == 0 &&
                          (trace->allocated[k] != 0) == (again.allocated[k] != 0),
                      "op %zu changed in the round trip", k);
    ks_trace_release(&again);
    free(text);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    ks_trace trace;
    ks_error err;
    ks_error_clear(&err);
    NTSTATUS status = ks_trace_parse((const char *)data, size, TRACE_SOURCE, &trace, &err);
    if (!NT_SUCCESS(status)) {
        check_refusal(status, &err);
        return 0;
    }
    check_well_formed(&trace);
    check_round_trip(&trace);
    ks_trace_release(&trace);
    return 0;
}
