/*
 * fuzz_differential.c -- the same ops over every catalogued allocator, each on its own config
 * instance, checking that they agree wherever the contract fixes the outcome.
 *
 * Checks. The config bytes are decoded once per allocator from the same offset (the decoder
 * reads the same number of bytes whatever the entry, so every copy ends at the same place), so
 * every allocator gets the same pins, Frames, flags and -- within what each entry serves -- the
 * same FrameSize and alignment. Each op is decoded once and run on every engine. For an
 * ALLOCATE the contract fixes the outcome when the pin has fewer than its settled Frames live
 * and capacity is promised (MUST_ALLOCATE, or KS_CAP_GUARANTEED): it must succeed; or when a
 * KS_CAP_BOUNDED allocator already has Frames live: it must fail. Every allocator whose outcome
 * is fixed must meet it; a disagreement is reported as a table of every allocator's outcome and
 * why each was or was not bound. Alignment, integrity, overlap (across allocators too: all
 * engines share one verifier session, so two allocators handing out the same memory is a
 * fault) and leaks are the verifier's.
 *
 * Lockstep. Ops name frames by rank, so the engines must keep equal live counts: when an
 * ALLOCATE's outcome is not fixed and allocators differ (an unbounded allocator succeeds where
 * a bounded one is full), the frame is given back (FREE of the newest) on those that got one,
 * and the op counts as failed for all. Allocators that refuse the decoded framing sit the input
 * out, and so do KS_CAP_DMA ones: for them the decoder reads a device byte and DMA op kinds, so
 * the same bytes make a different op stream (fuzz_alloc_<dma allocator> and the DMA target
 * cover them).
 */
#include <stdio.h>
#include <string.h>

#include "fuzz_helpers.h"

#define DIFF_MAX_ALLOCATORS 32u

typedef struct diff_member {
    const ks_allocator_entry *entry; /* &capped */
    ks_allocator_entry capped;       /* the catalogue entry with the fuzz FrameSize cap */
    ks_workload_config config;
    ks_engine *engine;
} diff_member;

typedef struct diff_run {
    diff_member members[DIFF_MAX_ALLOCATORS];
    unsigned member_count;
    ks_verifier *verifier;
} diff_run;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    ks_fuzz_set_identity("fuzz_differential", NULL);
    KS_FUZZ_CHECK(ks_catalogue_count() <= DIFF_MAX_ALLOCATORS, "%zu catalogue entries, room for %u",
                  ks_catalogue_count(), DIFF_MAX_ALLOCATORS);
    return 0;
}

/* Decodes every member's config from the same bytes and opens those that accept it. Returns the
 * reader's offset after the config. */
static size_t open_members(diff_run *run, const uint8_t *data, size_t size)
{
    size_t config_end = 0;
    for (size_t index = 0; index < ks_catalogue_count(); index++) {
        const ks_allocator_entry *entry = ks_catalogue_at(index);
        if (entry->caps & KS_CAP_DMA)
            continue;
        diff_member *member = &run->members[run->member_count];
        ks_byte_reader reader = {.data = data, .size_bytes = size, .offset = 0};
        const ks_allocator_entry *const entries[] = {ks_fuzz_capped_entry(entry, &member->capped)};
        ks_decode_config(&reader, entries, 1, &member->config);
        KS_FUZZ_CHECK(config_end == 0 || reader.offset == config_end,
                      "the config of '%s' took %zu bytes, another took %zu: the decoder must not depend on the entry",
                      entry->name, reader.offset, config_end);
        config_end = reader.offset;
        ks_decode_fit_heaps(&member->config, size - reader.offset);
        member->entry = &member->capped;
        if (ks_fuzz_engine_open(&member->config, run->verifier, &member->engine))
            run->member_count++;
    }
    return config_end;
}

/* Whether the contract fixes this ALLOCATE's outcome for member, and which way. */
typedef enum diff_bound { DIFF_FREE_CHOICE, DIFF_MUST_SUCCEED, DIFF_MUST_FAIL } diff_bound;

static diff_bound bound_of(const diff_member *member, unsigned pin, uint32_t live)
{
    const KSALLOCATOR_FRAMING *requested = &member->config.pins[pin].framing;
    const KSALLOCATOR_FRAMING *settled = ks_engine_framing(member->engine, pin);
    bool promised = (requested->RequirementsFlags & KSALLOCATOR_REQUIREMENTF_MUST_ALLOCATE) ||
                    (member->entry->caps & KS_CAP_GUARANTEED);
    if (settled->Frames != 0 && live < settled->Frames && promised)
        return DIFF_MUST_SUCCEED;
    if (settled->Frames != 0 && live >= settled->Frames && (member->entry->caps & KS_CAP_BOUNDED))
        return DIFF_MUST_FAIL;
    return DIFF_FREE_CHOICE;
}

static void report_disagreement(const diff_run *run, const ks_op *op, uint64_t op_index, const bool *allocated,
                                 const diff_bound *bounds, uint32_t live)
{
    static const char *const bound_names[] = {"free to choose", "must succeed", "must fail"};
    fprintf(stderr, "ksalloc-fuzz: fuzz_differential: op %llu ALLOCATE on pin %u with %u live:\n",
            (unsigned long long)op_index, op->pin, (unsigned)live);
    for (unsigned m = 0; m < run->member_count; m++) {
        const KSALLOCATOR_FRAMING *settled = ks_engine_framing(run->members[m].engine, op->pin);
        fprintf(stderr, "ksalloc-fuzz:   %-12s %-14s got %-6s (Frames %u, FrameSize %u)\n",
                run->members[m].entry->name, bound_names[bounds[m]], allocated[m] ? "frame" : "NULL",
                (unsigned)settled->Frames, (unsigned)settled->FrameSize);
    }
}

/* Runs one ALLOCATE everywhere, checks the bound outcomes, then restores lockstep. */
static void allocate_everywhere(diff_run *run, const ks_op *op, uint64_t op_index, uint32_t live)
{
    bool allocated[DIFF_MAX_ALLOCATORS];
    diff_bound bounds[DIFF_MAX_ALLOCATORS];
    unsigned successes = 0;
    bool violated = false;
    for (unsigned m = 0; m < run->member_count; m++) {
        bounds[m] = bound_of(&run->members[m], op->pin, live);
        ks_fuzz_engine_step(run->members[m].engine, op, &allocated[m]);
        successes += allocated[m];
        violated |= (bounds[m] == DIFF_MUST_SUCCEED && !allocated[m]) || (bounds[m] == DIFF_MUST_FAIL && allocated[m]);
    }
    if (violated)
        report_disagreement(run, op, op_index, allocated, bounds, live);
    KS_FUZZ_CHECK(!violated, "an allocator broke an outcome the contract fixes (table above)");
    if (successes == 0 || successes == run->member_count)
        return;
    ks_op give_back = {.kind = KS_OP_FREE, .pin = op->pin, .arg = live}; /* the newest frame */
    for (unsigned m = 0; m < run->member_count; m++)
        if (allocated[m])
            ks_fuzz_engine_step(run->members[m].engine, &give_back, NULL);
}

static void run_ops(diff_run *run, ks_byte_reader *reader)
{
    ks_live_view view;
    ks_op op;
    ks_engine_view(run->members[0].engine, &view);
    for (uint64_t op_index = 0; ks_decode_op(reader, &view, &op); op_index++) {
        if (op.kind == KS_OP_ALLOCATE) {
            allocate_everywhere(run, &op, op_index, view.live[op.pin]);
        } else {
            for (unsigned m = 0; m < run->member_count; m++)
                ks_fuzz_engine_step(run->members[m].engine, &op, NULL);
        }
        ks_engine_view(run->members[0].engine, &view);
        for (unsigned m = 1; m < run->member_count; m++) {
            ks_live_view other;
            ks_engine_view(run->members[m].engine, &other);
            KS_FUZZ_CHECK(other.live[op.pin] == view.live[op.pin], "lockstep lost: '%s' has %u live, '%s' %u",
                          run->members[m].entry->name, (unsigned)other.live[op.pin], run->members[0].entry->name,
                          (unsigned)view.live[op.pin]);
        }
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    diff_run run;
    memset(&run, 0, sizeof run);
    run.verifier = ks_fuzz_verifier_begin();
    size_t config_end = open_members(&run, data, size);
    if (run.member_count > 0) {
        ks_byte_reader reader = {.data = data, .size_bytes = size, .offset = config_end};
        run_ops(&run, &reader);
    }
    for (unsigned m = 0; m < run.member_count; m++)
        ks_fuzz_engine_close(run.members[m].engine);
    ks_fuzz_verifier_end(run.verifier);
    return 0;
}
