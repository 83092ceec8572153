/*
 * test_engine.c -- the workload engine (harness/engine.c) over a small correct allocator of its
 * own ("tiny", below), so that it depends on no allocator under development: pins and heaps as
 * InitializeAllocator sees them, the framing read back, init failures torn down, invalid ops
 * refused without a change of state, the live list against a reference list, close order,
 * TOUCH's writes, stats, every profile run end to end, a recorded run replayed exactly, and,
 * through the real verifier, a clean run for tiny and a caught fault for "scribbler", a copy of
 * tiny that corrupts a live frame.
 */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "catalogue.h"
#include "dma/dma.h"
#include "trace.h"
#include "verifier.h"
#include "workload.h"

/* ---- tiny: a malloc-based allocator with knobs and call records ----------------------------- */

#define TINY_MAX_RECORDED 4096u

/* What a test sets before opening the engine (each Criterion test runs in its own process). */
static struct tiny_knobs {
    uint32_t settle_frames;      /* Frames chosen when the pin asks 0 */
    uint32_t settle_frame_bytes; /* FrameSize chosen when the pin asks 0 */
    bool keep_zero_frame_bytes;  /* leave FrameSize 0 as it is */
    unsigned fail_init_pin;      /* pin id + 1 whose InitializeAllocator fails; 0 = none */
    uint32_t fail_every;         /* every n-th Allocate returns NULL; 0 = never */
    bool scribble;               /* corrupt the oldest live frame on every 4th Allocate */
} knobs = {.settle_frames = 32, .settle_frame_bytes = 128};

static struct tiny_calls {
    unsigned inits, deletes, frees;
    uint64_t allocations;
    uint64_t frames_live; /* over all instances */
    unsigned live_at_delete;
    const KSPIN *pins[KS_MAX_PINS];
    void *freed[TINY_MAX_RECORDED];
    unsigned freed_count;
} calls;

typedef struct tiny {
    KSALLOCATOR_FRAMING framing;
    void **frames; /* live, oldest first */
    uint32_t live;
    uint32_t capacity;
    uint64_t allocate_calls;
} tiny;

static NTSTATUS tiny_init(PVOID initial_context, PKSALLOCATOR_FRAMING framing, PVOID *context)
{
    const KSPIN *pin = initial_context;
    if (pin == NULL || pin->abi_version != KSALLOC_ABI_VERSION || !ks_framing_align_valid(framing))
        return STATUS_INVALID_PARAMETER;
    calls.inits++;
    if (pin->id < KS_MAX_PINS)
        calls.pins[pin->id] = pin;
    if (knobs.fail_init_pin == pin->id + 1)
        return STATUS_INSUFFICIENT_RESOURCES;
    tiny *t = calloc(1, sizeof *t);
    if (t == NULL)
        return STATUS_INSUFFICIENT_RESOURCES;
    if (framing->Frames == 0)
        framing->Frames = knobs.settle_frames;
    if (framing->FrameSize == 0 && !knobs.keep_zero_frame_bytes)
        framing->FrameSize = knobs.settle_frame_bytes;
    t->framing = *framing;
    *context = t;
    return STATUS_SUCCESS;
}

static void tiny_delete(PVOID context)
{
    tiny *t = context;
    calls.deletes++;
    calls.live_at_delete += t->live;
    calls.frames_live -= t->live;
    for (uint32_t i = 0; i < t->live; i++)
        free(t->frames[i]);
    free(t->frames);
    free(t);
}

static PVOID tiny_allocate(PVOID context)
{
    tiny *t = context;
    t->allocate_calls++;
    if (t->live >= t->framing.Frames || (knobs.fail_every && t->allocate_calls % knobs.fail_every == 0))
        return NULL;
    if (t->live == t->capacity) {
        uint32_t capacity = t->capacity ? t->capacity * 2 : 16;
        void **frames = realloc(t->frames, capacity * sizeof *frames);
        if (frames == NULL)
            return NULL;
        t->frames = frames;
        t->capacity = capacity;
    }
    size_t align_bytes = ks_framing_align_bytes(&t->framing);
    size_t frame_bytes = t->framing.FrameSize ? t->framing.FrameSize : 1;
    void *frame = NULL;
    if (posix_memalign(&frame, align_bytes < sizeof(void *) ? sizeof(void *) : align_bytes, frame_bytes) != 0)
        return NULL;
    memset(frame, 0, frame_bytes);
    if (knobs.scribble && t->live >= 1 && t->allocate_calls % 4 == 0)
        ((unsigned char *)t->frames[0])[0]++; /* never undone, unlike a flip */
    t->frames[t->live++] = frame;
    calls.allocations++;
    calls.frames_live++;
    return frame;
}

static void tiny_free(PVOID context, PVOID buffer)
{
    tiny *t = context;
    calls.frees++;
    if (calls.freed_count < TINY_MAX_RECORDED)
        calls.freed[calls.freed_count++] = buffer;
    for (uint32_t i = 0; i < t->live; i++) {
        if (t->frames[i] == buffer) {
            memmove(&t->frames[i], &t->frames[i + 1], (t->live - i - 1) * sizeof *t->frames);
            t->live--;
            calls.frames_live--;
            free(buffer);
            return;
        }
    }
}

static const KSALLOCATOR_DISPATCH tiny_dispatch = {tiny_init, tiny_delete, tiny_allocate, tiny_free};
static const ks_allocator_entry tiny_entry = {
    .abi_version = KSALLOC_ABI_VERSION, .struct_bytes = sizeof(ks_allocator_entry), .name = "tiny",
    .description = "malloc per frame, bounded by Frames", .caps = KS_CAP_BOUNDED, .dispatch = &tiny_dispatch};
static const ks_allocator_entry tiny_sharing_entry = {
    .abi_version = KSALLOC_ABI_VERSION, .struct_bytes = sizeof(ks_allocator_entry), .name = "tiny-sharing",
    .description = "tiny, accepting a shared heap it ignores", .caps = KS_CAP_BOUNDED | KS_CAP_SHARED_HEAP,
    .dispatch = &tiny_dispatch};
static const ks_allocator_entry scribbler_entry = {
    .abi_version = KSALLOC_ABI_VERSION, .struct_bytes = sizeof(ks_allocator_entry), .name = "scribbler",
    .description = "tiny, but corrupts its oldest live frame", .caps = KS_CAP_BOUNDED, .dispatch = &tiny_dispatch};

/* ---- helpers -------------------------------------------------------------------------------- */

static void pin_config(ks_workload_config *config, unsigned pin, uint32_t frames, uint32_t frame_bytes,
                       uint32_t align_mask)
{
    ks_pin_config *p = &config->pins[pin];
    memset(p, 0, sizeof *p);
    p->entry = &tiny_entry;
    strcpy(p->allocator, "tiny");
    p->framing.Frames = frames;
    p->framing.FrameSize = frame_bytes;
    p->framing.FileAlignment = align_mask;
    p->heap_index = -1;
    if (pin >= config->pin_count)
        config->pin_count = pin + 1;
}

static ks_engine *open_engine(const ks_workload_config *config, const ks_engine_options *options)
{
    ks_engine *engine = NULL;
    ks_error err;
    ks_error_clear(&err);
    cr_assert_eq(ks_engine_open(config, options, &engine, &err), STATUS_SUCCESS, "%s", err.message);
    cr_assert_not_null(engine);
    return engine;
}

static bool step(ks_engine *engine, ks_op_kind kind, unsigned pin, uint32_t k)
{
    ks_op op = {.kind = (uint8_t)kind, .pin = (uint8_t)pin, .arg = k};
    bool allocated = false;
    ks_error err;
    ks_error_clear(&err);
    cr_assert_eq(ks_engine_step(engine, &op, &allocated, &err), STATUS_SUCCESS, "%s", err.message);
    return allocated;
}

static void close_engine(ks_engine *engine)
{
    ks_error err;
    ks_error_clear(&err);
    cr_assert_eq(ks_engine_close(engine, &err), STATUS_SUCCESS, "%s", err.message);
}

/* ---- open and close ------------------------------------------------------------------------- */

Test(engine, open_offers_pins_and_reads_the_settled_framing_back)
{
    ks_workload_config config = {0};
    pin_config(&config, 0, 0, 0, 0);
    pin_config(&config, 1, 16, 4096, 63);
    config.pins[1].framing.RequirementsFlags = KSALLOCATOR_REQUIREMENTF_MUST_ALLOCATE;
    config.pins[1].heap_index = 0;
    config.heap_count = 1;
    config.heap_bytes[0] = 1 << 20;
    ks_engine *engine = open_engine(&config, NULL);

    cr_assert_eq(calls.inits, 2);
    for (unsigned i = 0; i < 2; i++) {
        const KSPIN *pin = calls.pins[i];
        char name[8];
        snprintf(name, sizeof name, "pin%u", i);
        cr_assert_eq(pin->abi_version, KSALLOC_ABI_VERSION);
        cr_assert_eq(pin->id, i);
        cr_assert_str_eq(pin->name, name);
        cr_assert_eq(memcmp(&pin->framing, &config.pins[i].framing, sizeof pin->framing), 0,
                     "KSPIN.framing is the request");
        cr_assert_null(pin->dma_adapter);
    }
    cr_assert_null(calls.pins[0]->heap);
    cr_assert_not_null(calls.pins[1]->heap);
    cr_assert_str_eq(calls.pins[1]->heap->name, "heap0");
    cr_assert_geq(calls.pins[1]->heap->size_bytes, (size_t)1 << 20);

    const KSALLOCATOR_FRAMING *settled = ks_engine_framing(engine, 0);
    cr_assert_eq(settled->Frames, 32);
    cr_assert_eq(settled->FrameSize, 128);
    cr_assert_eq(ks_engine_framing(engine, 1)->FrameSize, 4096);
    cr_assert_null(ks_engine_framing(engine, 2));
    ks_live_view view;
    ks_engine_view(engine, &view);
    cr_assert_eq(view.pin_count, 2);
    cr_assert_eq(view.frames[0], 32);
    cr_assert_eq(view.frames[1], 16);
    cr_assert_eq(view.live[0] + view.live[1], 0);
    close_engine(engine);
    cr_assert_eq(calls.deletes, 2);
}

/* A closed engine's memory is reused by the next open on the thread: nothing of it may show. */
Test(engine, an_engine_opened_after_another_starts_from_nothing)
{
    ks_workload_config first = {0};
    pin_config(&first, 0, 8, 64, 0);
    pin_config(&first, 1, 8, 64, 0);
    ks_engine *engine = open_engine(&first, NULL);
    step(engine, KS_OP_ALLOCATE, 0, 0);
    step(engine, KS_OP_ALLOCATE, 1, 0);
    step(engine, KS_OP_ALLOCATE, 1, 0);
    step(engine, KS_OP_FREE, 1, 0);
    cr_assert_eq(ks_engine_stats(engine)->ops, 4);
    close_engine(engine);

    ks_workload_config second = {0};
    pin_config(&second, 0, 4, 256, 0);
    engine = open_engine(&second, NULL);
    const ks_run_stats *stats = ks_engine_stats(engine);
    cr_assert_eq(stats->ops + stats->allocations + stats->frees + stats->peak_live, 0);
    ks_live_view view;
    ks_engine_view(engine, &view);
    cr_assert_eq(view.pin_count, 1);
    cr_assert_eq(view.live[0] + view.live[1], 0, "no frame of the closed engine is live");
    cr_assert_null(ks_engine_frame(engine, 0, 0));
    cr_assert_null(ks_engine_framing(engine, 1), "pin 1 of the closed engine is gone");
    cr_assert_eq(ks_engine_framing(engine, 0)->FrameSize, 256);
    step(engine, KS_OP_ALLOCATE, 0, 0);
    cr_assert_eq(stats->ops, 1);
    cr_assert_eq(stats->peak_live, 1);
    close_engine(engine);
}

Test(engine, open_rejects_configs_it_cannot_run)
{
    ks_workload_config config = {0};
    ks_engine *engine = (ks_engine *)&config; /* must be reset to NULL on failure */
    ks_error err;
    cr_assert_eq(ks_engine_open(&config, NULL, &engine, &err), STATUS_INVALID_PARAMETER, "no pins");
    cr_assert_null(engine);
    cr_assert_not_null(strstr(err.message, "0 pins"), "%s", err.message);
    pin_config(&config, 0, 4, 64, 0);
    pin_config(&config, 1, 4, 64, 0);
    config.pins[1].entry = NULL;
    cr_assert_eq(ks_engine_open(&config, NULL, &engine, &err), STATUS_INVALID_PARAMETER);
    cr_assert_not_null(strstr(err.message, "pin 1 (allocator 'tiny') has no entry"), "%s", err.message);
    pin_config(&config, 1, 4, 64, 0);
    config.pins[1].heap_index = 0;
    cr_assert_eq(ks_engine_open(&config, NULL, &engine, &err), STATUS_INVALID_PARAMETER);
    cr_assert_not_null(strstr(err.message, "pin 1 names heap 0"), "%s", err.message);
    config.pins[1].heap_index = -1;
    static const KSALLOCATOR_DISPATCH half = {tiny_init, tiny_delete, NULL, tiny_free};
    ks_allocator_entry half_entry = tiny_entry;
    half_entry.dispatch = &half;
    config.pins[0].entry = &half_entry;
    cr_assert_eq(ks_engine_open(&config, NULL, &engine, &err), STATUS_INVALID_PARAMETER);
    cr_assert_not_null(strstr(err.message, "incomplete dispatch"), "%s", err.message);
    config.pins[0].entry = &tiny_entry;
    config.pin_count = KS_MAX_PINS + 1;
    cr_assert_eq(ks_engine_open(&config, NULL, &engine, &err), STATUS_INVALID_PARAMETER);
    cr_assert_eq(calls.inits, 0, "nothing was initialised for a bad config");
}

Test(engine, init_failure_names_the_pin_and_tears_down_what_was_opened)
{
    ks_workload_config config = {0};
    for (unsigned i = 0; i < 3; i++)
        pin_config(&config, i, 8, 100, 7);
    config.pins[2].framing.RequirementsFlags = KSALLOCATOR_REQUIREMENTF_MUST_ALLOCATE;
    config.pins[2].heap_index = 0;
    config.heap_count = 1;
    config.heap_bytes[0] = 65536;
    knobs.fail_init_pin = 3; /* pin 2 */
    ks_engine *engine = NULL;
    ks_error err;
    cr_assert_eq(ks_engine_open(&config, NULL, &engine, &err), STATUS_INSUFFICIENT_RESOURCES);
    cr_assert_null(engine);
    cr_assert_str_eq(err.message, "pin2 (allocator 'tiny', frames=8 frame_bytes=100 align_mask=0x7 flags=0x8 "
                                  "heap=heap0): InitializeAllocator failed with STATUS_INSUFFICIENT_RESOURCES");
    cr_assert_eq(calls.inits, 3);
    cr_assert_eq(calls.deletes, 2, "the two pins opened before it are deleted");
}

Test(engine, close_frees_newest_first_then_deletes)
{
    ks_workload_config config = {0};
    pin_config(&config, 0, 8, 64, 0);
    pin_config(&config, 1, 8, 64, 0);
    ks_engine *engine = open_engine(&config, NULL);
    void *frames[5];
    for (unsigned i = 0; i < 5; i++) {
        cr_assert(step(engine, KS_OP_ALLOCATE, 0, 0));
        frames[i] = ks_engine_frame(engine, 0, i);
    }
    step(engine, KS_OP_FREE, 0, 2); /* live: 0 1 3 4 */
    step(engine, KS_OP_ALLOCATE, 1, 0);
    void *pin1_frame = ks_engine_frame(engine, 1, 0);
    close_engine(engine);
    void *const expected[] = {frames[2], frames[4], frames[3], frames[1], frames[0], pin1_frame};
    cr_assert_eq(calls.freed_count, 6);
    for (unsigned i = 0; i < 6; i++)
        cr_assert_eq(calls.freed[i], expected[i], "free %u out of order", i);
    cr_assert_eq(calls.deletes, 2);
    cr_assert_eq(calls.live_at_delete, 0);
    cr_assert_eq(calls.frames_live, 0);
}

Test(engine, keep_live_at_close_leaves_frames_to_delete_allocator)
{
    ks_workload_config config = {0};
    pin_config(&config, 0, 8, 64, 0);
    ks_engine_options options = {.keep_live_at_close = true};
    ks_engine *engine = open_engine(&config, &options);
    for (unsigned i = 0; i < 3; i++)
        step(engine, KS_OP_ALLOCATE, 0, 0);
    close_engine(engine);
    cr_assert_eq(calls.frees, 0);
    cr_assert_eq(calls.deletes, 1);
    cr_assert_eq(calls.live_at_delete, 3);
}

Test(engine, close_of_null_is_a_no_op)
{
    cr_assert_eq(ks_engine_close(NULL, NULL), STATUS_SUCCESS);
}

/* ---- step ----------------------------------------------------------------------------------- */

typedef struct engine_snapshot {
    ks_live_view view;
    ks_run_stats stats;
    void *frames[KS_MAX_PINS][8];
    uint64_t allocator_calls[3]; /* allocations, frees, inits + deletes */
} engine_snapshot;

static void snapshot(ks_engine *engine, engine_snapshot *snap)
{
    memset(snap, 0, sizeof *snap);
    ks_engine_view(engine, &snap->view);
    snap->stats = *ks_engine_stats(engine);
    for (unsigned pin = 0; pin < snap->view.pin_count; pin++)
        for (uint32_t k = 0; k < 8; k++)
            snap->frames[pin][k] = ks_engine_frame(engine, pin, k);
    snap->allocator_calls[0] = calls.allocations;
    snap->allocator_calls[1] = calls.frees;
    snap->allocator_calls[2] = calls.inits + calls.deletes;
}

Test(engine, invalid_ops_are_refused_and_change_nothing)
{
    ks_workload_config config = {0};
    pin_config(&config, 0, 8, 64, 0);
    pin_config(&config, 1, 8, 64, 0);
    char *text = NULL;
    size_t text_bytes = 0;
    FILE *stream = open_memstream(&text, &text_bytes);
    ks_trace_writer *writer = NULL;
    cr_assert_eq(ks_trace_writer_open_stream(stream, &config, "manual", 0, &writer, NULL), STATUS_SUCCESS);
    ks_engine_options options = {.trace = writer};
    ks_engine *engine = open_engine(&config, &options);
    for (unsigned i = 0; i < 3; i++)
        step(engine, KS_OP_ALLOCATE, 0, 0);
    engine_snapshot before, after;
    snapshot(engine, &before);

    const struct {
        ks_op op;
        const char *message;
    } cases[] = {
        {{.kind = KS_OP_ALLOCATE, .pin = 2}, "op ALLOCATE on pin 2: no such pin, the workload has 2"},
        {{.kind = KS_OP_FREE, .pin = 200}, "op FREE on pin 200: no such pin, the workload has 2"},
        {{.kind = 7, .pin = 0}, "op kind 7 on pin 0: unknown kind, expected ALLOCATE, FREE, TOUCH or a DMA op"},
        {{.kind = KS_OP_DMA_LAST + 1, .pin = 0},
         "op kind 19 on pin 0: unknown kind, expected ALLOCATE, FREE, TOUCH or a DMA op"},
        {{.kind = KS_OP_DMA_FIRST, .pin = 0},
         "op DMA_CAPTURE on pin 0: the workload has no DMA device (set dma options)"},
        {{.kind = KS_OP_FREE, .pin = 0, .arg = 3}, "op FREE on pin 0: k=3 but 3 frames are live"},
        {{.kind = KS_OP_TOUCH, .pin = 0, .arg = UINT32_MAX}, "op TOUCH on pin 0: k=4294967295 but 3 frames are live"},
        {{.kind = KS_OP_FREE, .pin = 1, .arg = 0}, "op FREE on pin 1: k=0 but 0 frames are live"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        ks_error err;
        bool allocated = true;
        cr_assert_eq(ks_engine_step(engine, &cases[i].op, &allocated, &err), STATUS_INVALID_PARAMETER, "case %zu", i);
        cr_assert_str_eq(err.message, cases[i].message, "case %zu", i);
        snapshot(engine, &after);
        cr_assert_eq(memcmp(&before, &after, sizeof before), 0, "case %zu changed the engine's state", i);
    }
    step(engine, KS_OP_FREE, 0, 0);
    cr_assert_eq(ks_engine_step(engine, NULL, NULL, NULL), STATUS_INVALID_PARAMETER);
    close_engine(engine);
    cr_assert_eq(ks_trace_writer_close(writer, NULL), STATUS_SUCCESS);
    fclose(stream);
    cr_assert_str_eq(strstr(text, "A 0 ok"), "A 0 ok\nA 0 ok\nA 0 ok\nF 0 0\nend 4\n", "only valid ops are recorded");
    free(text);
}

/* The live list against a plain array, through growth, ring wrap-around and removals at the
 * front, the back and anywhere between. */
Test(engine, live_list_matches_a_reference_list)
{
    knobs.settle_frames = 1u << 20;
    ks_workload_config config = {0};
    pin_config(&config, 0, 0, 8, 0);
    ks_engine *engine = open_engine(&config, NULL);
    enum { MAX_LIVE = 700 };
    static void *reference[MAX_LIVE + 1];
    uint32_t live = 0;
    uint64_t seed = 77;
    for (unsigned i = 0; i < 40000; i++) {
        seed = seed * 6364136223846793005ull + 1442695040888963407ull;
        uint32_t r = (uint32_t)(seed >> 33);
        unsigned phase = (i / 2000) % 4; /* grow, stream (fifo), shrink from random k, stream (lifo) */
        bool allocate = live == 0 || (live < MAX_LIVE && (phase == 0 ? r % 4 != 0 : phase == 2 ? r % 4 == 0 : i % 2));
        if (allocate) {
            cr_assert(step(engine, KS_OP_ALLOCATE, 0, 0));
            reference[live] = ks_engine_frame(engine, 0, live);
            cr_assert_not_null(reference[live]);
            live++;
        } else {
            uint32_t k = phase == 1 ? 0 : phase == 3 ? live - 1 : (r >> 2) % live;
            step(engine, KS_OP_FREE, 0, k);
            cr_assert_eq(calls.freed[calls.freed_count - 1], reference[k], "op %u freed the wrong frame", i);
            memmove(&reference[k], &reference[k + 1], (live - k - 1) * sizeof reference[0]);
            live--;
        }
        if (calls.freed_count == TINY_MAX_RECORDED)
            calls.freed_count = 0;
        for (uint32_t k = 0; k < live; k++)
            cr_assert_eq(ks_engine_frame(engine, 0, k), reference[k], "op %u: frame %u of %u", i, k, live);
        cr_assert_null(ks_engine_frame(engine, 0, live));
    }
    cr_assert_null(ks_engine_frame(engine, 1, 0));
    close_engine(engine);
}

Test(engine, touch_writes_each_page_start_and_the_last_byte)
{
    ks_workload_config config = {0};
    pin_config(&config, 0, 4, 10000, 0);
    ks_engine *engine = open_engine(&config, NULL);
    step(engine, KS_OP_ALLOCATE, 0, 0);
    step(engine, KS_OP_TOUCH, 0, 0);
    const unsigned char *frame = ks_engine_frame(engine, 0, 0);
    for (uint32_t offset = 0; offset < 10000; offset++) {
        bool written = offset == 0 || offset == 4096 || offset == 8192 || offset == 9999;
        cr_assert_eq(frame[offset] != 0, written, "byte %u", offset);
    }
    cr_assert_eq(ks_engine_stats(engine)->touches, 1);
    close_engine(engine);
}

Test(engine, touch_of_a_zero_byte_frame_writes_nothing)
{
    knobs.keep_zero_frame_bytes = true;
    ks_workload_config config = {0};
    pin_config(&config, 0, 4, 0, 0);
    pin_config(&config, 1, 4, 1, 0);
    ks_engine *engine = open_engine(&config, NULL);
    cr_assert_eq(ks_engine_framing(engine, 0)->FrameSize, 0);
    step(engine, KS_OP_ALLOCATE, 0, 0);
    step(engine, KS_OP_ALLOCATE, 1, 0);
    step(engine, KS_OP_TOUCH, 0, 0);
    step(engine, KS_OP_TOUCH, 1, 0);
    cr_assert_eq(*(unsigned char *)ks_engine_frame(engine, 0, 0), 0, "FrameSize 0: untouched");
    cr_assert_neq(*(unsigned char *)ks_engine_frame(engine, 1, 0), 0, "FrameSize 1: its one byte");
    close_engine(engine);
}

Test(engine, stats_and_last_allocate_failed_follow_the_ops)
{
    ks_workload_config config = {0};
    pin_config(&config, 0, 2, 64, 0);
    pin_config(&config, 1, 2, 64, 0);
    ks_engine *engine = open_engine(&config, NULL);
    ks_live_view view;
    cr_assert(step(engine, KS_OP_ALLOCATE, 0, 0));
    cr_assert(step(engine, KS_OP_ALLOCATE, 0, 0));
    cr_assert(step(engine, KS_OP_ALLOCATE, 1, 0));
    cr_assert_not(step(engine, KS_OP_ALLOCATE, 0, 0), "Frames 2: the third is NULL");
    ks_engine_view(engine, &view);
    cr_assert(view.last_allocate_failed[0]);
    cr_assert_not(view.last_allocate_failed[1]);
    cr_assert_eq(view.live[0], 2);
    step(engine, KS_OP_TOUCH, 0, 1);
    step(engine, KS_OP_FREE, 0, 1);
    ks_engine_view(engine, &view);
    cr_assert(view.last_allocate_failed[0], "a FREE does not clear it, only a served ALLOCATE does");
    cr_assert(step(engine, KS_OP_ALLOCATE, 0, 0));
    ks_engine_view(engine, &view);
    cr_assert_not(view.last_allocate_failed[0]);
    const ks_run_stats *stats = ks_engine_stats(engine);
    cr_assert_eq(stats->ops, 7);
    cr_assert_eq(stats->allocations, 4);
    cr_assert_eq(stats->allocation_failures, 1);
    cr_assert_eq(stats->frees, 1);
    cr_assert_eq(stats->touches, 1);
    cr_assert_eq(stats->peak_live, 3, "peak over all pins");
    cr_assert_eq(stats->elapsed_ns, 0, "only run_profile times");
    close_engine(engine);
}

/* ---- run_profile ---------------------------------------------------------------------------- */

static void run_one(ks_profile profile, const ks_allocator_entry *entry, const KSALLOCATOR_FRAMING *base,
                    ks_verifier *verifier, uint64_t ops, uint64_t seed)
{
    ks_workload_config config;
    ks_error err;
    cr_assert_eq(ks_profile_config(profile, entry, entry->name, base, &config, &err), STATUS_SUCCESS, "%s", err.message);
    ks_engine_options options = {.verifier = verifier};
    ks_engine *engine = open_engine(&config, &options);
    cr_assert_eq(ks_engine_run_profile(engine, profile, seed, ops, true, &err), STATUS_SUCCESS, "%s frames=%u: %s",
                 ks_profile_name(profile), base->Frames, err.message);
    const ks_run_stats *stats = ks_engine_stats(engine);
    cr_assert_eq(stats->ops, ops);
    cr_assert_eq(stats->allocations + stats->allocation_failures + stats->frees + stats->touches + stats->dma_ops, ops);
    /* Loopback needs two frames live: with Frames = 1 it only allocates and frees. */
    bool dma_expected = ks_profile_uses_dma(profile) && (profile != KS_PROFILE_LOOPBACK || base->Frames != 1);
    cr_assert_eq(stats->dma_ops > 0, dma_expected, "%s frames=%u: %llu DMA ops", ks_profile_name(profile),
                 base->Frames, (unsigned long long)stats->dma_ops);
    cr_assert_gt(stats->elapsed_ns, 0);
    cr_assert_gt(stats->allocations, 0);
    close_engine(engine);
}

Test(engine, every_profile_runs_valid_ops_on_tiny)
{
    const uint32_t frames_cases[] = {0, 1, 64};
    const uint32_t fail_cases[] = {0, 7};
    for (int p = 0; p < KS_PROFILE_COUNT; p++)
        for (size_t f = 0; f < 3; f++)
            for (size_t e = 0; e < 2; e++) {
                knobs.fail_every = fail_cases[e];
                KSALLOCATOR_FRAMING base = {.Frames = frames_cases[f], .FrameSize = 256, .FileAlignment = 15};
                run_one((ks_profile)p, p == KS_PROFILE_FRAGMENTING && e ? &tiny_sharing_entry : &tiny_entry, &base,
                        NULL, 5000, 1 + f);
                cr_assert_eq(calls.frames_live, 0, "close left frames live");
            }
}

Test(engine, run_profile_rejects_an_unknown_profile)
{
    ks_workload_config config = {0};
    pin_config(&config, 0, 4, 64, 0);
    ks_engine *engine = open_engine(&config, NULL);
    ks_error err;
    cr_assert_eq(ks_engine_run_profile(engine, KS_PROFILE_COUNT, 1, 10, false, &err), STATUS_INVALID_PARAMETER);
    cr_assert_eq(ks_engine_stats(engine)->ops, 0);
    close_engine(engine);
}

/* Records a profile run into a string through the engine. */
static char *record_run(ks_profile profile, uint32_t frames, uint64_t seed, uint64_t ops)
{
    KSALLOCATOR_FRAMING base = {.Frames = frames, .FrameSize = 64, .FileAlignment = 7};
    ks_workload_config config;
    cr_assert_eq(ks_profile_config(profile, &tiny_entry, "tiny", &base, &config, NULL), STATUS_SUCCESS);
    char *text = NULL;
    size_t text_bytes = 0;
    FILE *stream = open_memstream(&text, &text_bytes);
    ks_trace_writer *writer = NULL;
    cr_assert_eq(ks_trace_writer_open_stream(stream, &config, ks_profile_name(profile), seed, &writer, NULL),
                 STATUS_SUCCESS);
    ks_engine_options options = {.trace = writer};
    ks_engine *engine = open_engine(&config, &options);
    cr_assert_eq(ks_engine_run_profile(engine, profile, seed, ops, false, NULL), STATUS_SUCCESS);
    close_engine(engine);
    cr_assert_eq(ks_trace_writer_close(writer, NULL), STATUS_SUCCESS);
    fclose(stream);
    return text;
}

static void parse_run(const char *text, ks_trace *trace)
{
    ks_error err;
    cr_assert_eq(ks_trace_parse(text, strlen(text), "recorded", trace, &err), STATUS_SUCCESS, "%s", err.message);
    for (unsigned i = 0; i < trace->config.pin_count; i++) {
        cr_assert_str_eq(trace->config.pins[i].allocator, "tiny");
        trace->config.pins[i].entry = &tiny_entry;
    }
}

Test(engine, recorded_runs_have_the_profile_shapes)
{
    ks_trace trace;
    char *text = record_run(KS_PROFILE_FIFO, 64, 3, 5000);
    parse_run(text, &trace);
    uint64_t frees = 0;
    for (size_t i = 0; i < trace.op_count; i++)
        if (trace.ops[i].kind == KS_OP_FREE) {
            cr_assert_eq(trace.ops[i].arg, 0, "fifo op %zu freed k=%u", i, trace.ops[i].arg);
            frees++;
        }
    cr_assert_gt(frees, 1000);
    ks_trace_release(&trace);
    free(text);

    text = record_run(KS_PROFILE_LIFO, 64, 3, 5000);
    parse_run(text, &trace);
    uint32_t live = 0;
    frees = 0;
    for (size_t i = 0; i < trace.op_count; i++) {
        if (trace.ops[i].kind == KS_OP_ALLOCATE) {
            live += trace.allocated[i];
        } else if (trace.ops[i].kind == KS_OP_FREE) {
            cr_assert_eq(trace.ops[i].arg, live - 1, "lifo op %zu freed k=%u of %u", i, trace.ops[i].arg, live);
            live--;
            frees++;
        }
    }
    cr_assert_gt(frees, 1000);
    ks_trace_release(&trace);
    free(text);
}

Test(engine, same_seed_same_run_and_a_recorded_run_replays_exactly)
{
    char *first = record_run(KS_PROFILE_RANDOM, 40, 9, 3000);
    char *again = record_run(KS_PROFILE_RANDOM, 40, 9, 3000);
    char *other = record_run(KS_PROFILE_RANDOM, 40, 10, 3000);
    cr_assert_str_eq(first, again);
    cr_assert_str_neq(first, other);

    ks_trace trace;
    parse_run(first, &trace);
    cr_assert_eq(trace.op_count, 3000);
    cr_assert_eq(trace.seed, 9);
    ks_engine *engine = open_engine(&trace.config, NULL);
    for (size_t i = 0; i < trace.op_count; i++) {
        bool allocated = false;
        ks_error err;
        cr_assert_eq(ks_engine_step(engine, &trace.ops[i], &allocated, &err), STATUS_SUCCESS, "op %zu: %s", i,
                     err.message);
        if (trace.ops[i].kind == KS_OP_ALLOCATE)
            cr_assert_eq(allocated, trace.allocated[i] != 0, "op %zu diverged", i);
    }
    close_engine(engine);
    ks_trace_release(&trace);
    free(first);
    free(again);
    free(other);
}

Test(engine, k_beyond_the_live_frames_is_a_replay_error)
{
    ks_trace trace;
    ks_error err;
    cr_assert_eq(ks_trace_load(KS_SOURCE_DIR "/tests/data/traces/k_out_of_range.trace", &trace, &err), STATUS_SUCCESS,
                 "%s", err.message);
    trace.config.pins[0].entry = &tiny_entry;
    ks_engine *engine = open_engine(&trace.config, NULL);
    cr_assert(step(engine, KS_OP_ALLOCATE, 0, 0));
    cr_assert(step(engine, KS_OP_ALLOCATE, 0, 0));
    cr_assert_eq(ks_engine_step(engine, &trace.ops[2], NULL, &err), STATUS_INVALID_PARAMETER);
    cr_assert_str_eq(err.message, "op FREE on pin 0: k=5 but 2 frames are live");
    close_engine(engine);
    ks_trace_release(&trace);
}

/* ---- through the verifier ------------------------------------------------------------------- */

Test(engine_verifier, tiny_runs_every_profile_without_a_fault)
{
    ks_verifier *verifier = NULL;
    ks_verifier_options vopts = {.self_check_every_ops = 0};
    ks_error err;
    cr_assert_eq(ks_verifier_create(&vopts, &verifier, &err), STATUS_SUCCESS, "%s", err.message);
    for (int p = 0; p < KS_PROFILE_COUNT; p++) {
        KSALLOCATOR_FRAMING base = {.Frames = 32, .FrameSize = 100, .FileAlignment = 7};
        base.RequirementsFlags = KSALLOCATOR_REQUIREMENTF_MUST_ALLOCATE;
        run_one((ks_profile)p, &tiny_entry, &base, verifier, 3000, 5);
    }
    const ks_fault *fault = ks_verifier_fault_at(verifier, 0);
    cr_assert_eq(ks_verifier_fault_count(verifier), 0, "%s", fault ? fault->message : "");
    cr_assert_geq(ks_verifier_op_count(verifier), 5 * 3000, "every op went through the verifier");
    ks_verifier_destroy(verifier);
}

Test(engine_verifier, settled_framing_is_read_back_through_the_verifier)
{
    ks_verifier *verifier = NULL;
    cr_assert_eq(ks_verifier_create(NULL, &verifier, NULL), STATUS_SUCCESS);
    ks_workload_config config = {0};
    pin_config(&config, 0, 0, 0, 0);
    ks_engine_options options = {.verifier = verifier};
    ks_engine *engine = open_engine(&config, &options);
    cr_assert_eq(ks_engine_framing(engine, 0)->Frames, 32);
    cr_assert_eq(ks_engine_framing(engine, 0)->FrameSize, 128);
    close_engine(engine);
    cr_assert_eq(ks_verifier_fault_count(verifier), 0);
    ks_verifier_destroy(verifier);
}

static ks_engine *open_scribbler(ks_verifier *verifier)
{
    knobs.scribble = true;
    ks_workload_config config = {0};
    pin_config(&config, 0, 64, 64, 7);
    config.pins[0].entry = &scribbler_entry;
    strcpy(config.pins[0].allocator, "scribbler");
    ks_engine_options options = {.verifier = verifier};
    return open_engine(&config, &options);
}

Test(engine_verifier, a_corrupting_allocator_is_caught_and_the_run_stops)
{
    ks_verifier *verifier = NULL;
    cr_assert_eq(ks_verifier_create(NULL, &verifier, NULL), STATUS_SUCCESS);
    ks_engine *engine = open_scribbler(verifier);
    ks_error err;
    cr_assert_eq(ks_engine_run_profile(engine, KS_PROFILE_RANDOM, 1, 10000, true, &err), STATUS_SUCCESS, "%s",
                 err.message);
    cr_assert_eq(ks_verifier_fault_count(verifier), 1, "stops at the first fault");
    const ks_fault *fault = ks_verifier_fault_at(verifier, 0);
    cr_assert_eq(fault->kind, KS_FAULT_CORRUPTION, "%s", fault->message);
    cr_assert_str_eq(fault->allocator, "scribbler");
    cr_assert_lt(ks_engine_stats(engine)->ops, 10000);
    close_engine(engine);
    ks_verifier_destroy(verifier);
}

Test(engine_verifier, without_stop_at_fault_the_run_goes_on)
{
    ks_verifier *verifier = NULL;
    cr_assert_eq(ks_verifier_create(NULL, &verifier, NULL), STATUS_SUCCESS);
    ks_engine *engine = open_scribbler(verifier);
    cr_assert_eq(ks_engine_run_profile(engine, KS_PROFILE_RANDOM, 1, 2000, false, NULL), STATUS_SUCCESS);
    cr_assert_eq(ks_engine_stats(engine)->ops, 2000);
    cr_assert_gt(ks_verifier_fault_count(verifier), 1);
    close_engine(engine);
    ks_verifier_destroy(verifier);
}

Test(engine_verifier, touch_goes_through_the_verifier)
{
    ks_verifier *verifier = NULL;
    cr_assert_eq(ks_verifier_create(NULL, &verifier, NULL), STATUS_SUCCESS);
    ks_engine *engine = open_scribbler(verifier);
    for (unsigned i = 0; i < 3; i++)
        step(engine, KS_OP_ALLOCATE, 0, 0);
    cr_assert_eq(ks_verifier_fault_count(verifier), 0, "the scribble is not seen until the frame is used");
    step(engine, KS_OP_ALLOCATE, 0, 0); /* 4th Allocate: corrupts frame 0 */
    uint64_t ops_before = ks_verifier_op_count(verifier);
    step(engine, KS_OP_TOUCH, 0, 0);
    cr_assert_eq(ks_verifier_op_count(verifier), ops_before + 1);
    cr_assert_eq(ks_verifier_fault_count(verifier), 1);
    cr_assert_eq(ks_verifier_fault_at(verifier, 0)->kind, KS_FAULT_CORRUPTION);
    close_engine(engine);
    ks_verifier_destroy(verifier);
}

/* ---- DMA ------------------------------------------------------------------------------------ */

static ks_engine *open_dma_engine(const char *allocator, const char *dma_options, uint32_t frames,
                                  uint32_t frame_bytes, const ks_engine_options *options)
{
    ks_workload_config config;
    memset(&config, 0, sizeof config);
    config.pin_count = 1;
    config.pins[0].entry = ks_catalogue_find(allocator);
    cr_assert_not_null(config.pins[0].entry, "%s", allocator);
    snprintf(config.pins[0].allocator, sizeof config.pins[0].allocator, "%s", allocator);
    /* Page-aligned, as DMA buffers are: a streaming mapping on a non-coherent device shadows
     * whole pages (harness/dma/cache.c), so a frame sharing a page with other heap data would
     * have the DMA layer read that data (ASan reports it). */
    config.pins[0].framing = (KSALLOCATOR_FRAMING){.Frames = frames, .FrameSize = frame_bytes, .FileAlignment = 4095};
    config.pins[0].heap_index = -1;
    snprintf(config.dma_options, sizeof config.dma_options, "%s", dma_options);
    return open_engine(&config, options);
}

static NTSTATUS dma_step(ks_engine *engine, ks_op_kind kind, uint32_t k, ks_error *err)
{
    ks_op op = {.kind = (uint8_t)kind, .arg = k};
    return ks_engine_step(engine, &op, NULL, err);
}

Test(engine_dma, ops_run_on_frames_of_any_allocator_and_of_dma_allocators)
{
    const char *allocators[] = {"pool", "tlsf", "dma_common", "dma_sg", "dma_pool"};
    const char *devices[] = {"mask=32,sg=1", "mask=32,coherent=0,sg=1", "mask=32,coherent=0,iommu=1"};
    for (size_t a = 0; a < sizeof allocators / sizeof allocators[0]; a++)
        for (size_t d = 0; d < sizeof devices / sizeof devices[0]; d++) {
            ks_verifier *verifier = NULL;
            ks_verifier_options vopts = {0};
            cr_assert_eq(ks_verifier_create(&vopts, &verifier, NULL), STATUS_SUCCESS);
            ks_engine_options options = {.verifier = verifier};
            ks_engine *engine = open_dma_engine(allocators[a], devices[d], 4, 12288, &options);
            ks_live_view view;
            ks_engine_view(engine, &view);
            cr_assert(view.dma);
            ks_error err;
            ks_error_clear(&err);
            cr_assert(step(engine, KS_OP_ALLOCATE, 0, 0));
            cr_assert(step(engine, KS_OP_ALLOCATE, 0, 0));
            for (ks_op_kind kind = KS_OP_DMA_CAPTURE; kind <= KS_OP_DMA_LAST; kind++)
                cr_assert_eq(dma_step(engine, kind, 0, &err), STATUS_SUCCESS, "%s on %s: %s", allocators[a],
                             devices[d], err.message);
            const ks_run_stats *stats = ks_engine_stats(engine);
            cr_assert_eq(stats->dma_ops, 3);
            cr_assert_geq(stats->dma_bytes, 3 * 12288ull, "%s: %llu bytes", allocators[a],
                          (unsigned long long)stats->dma_bytes);
            step(engine, KS_OP_TOUCH, 0, 0); /* the verifier's pattern survived the device */
            step(engine, KS_OP_TOUCH, 0, 1);
            close_engine(engine);
            cr_assert_eq(ks_verifier_fault_count(verifier), 0, "%s on %s: %s", allocators[a], devices[d],
                         ks_verifier_fault_at(verifier, 0)->message);
            ks_verifier_destroy(verifier);
        }
}

Test(engine_dma, a_dma_allocator_gets_a_device_without_options)
{
    ks_engine *engine = open_dma_engine("dma_common", "", 4, 4096, NULL);
    cr_assert_not_null(ks_engine_dma_device(engine));
    cr_assert(step(engine, KS_OP_ALLOCATE, 0, 0));
    ks_error err;
    cr_assert_eq(dma_step(engine, KS_OP_DMA_CAPTURE, 0, &err), STATUS_SUCCESS, "%s", err.message);
    close_engine(engine);
}

Test(engine_dma, bad_options_and_bad_loopback_are_refused)
{
    ks_workload_config config;
    memset(&config, 0, sizeof config);
    pin_config(&config, 0, 4, 64, 0);
    strcpy(config.dma_options, "mask=32,warp=9");
    ks_engine *engine = NULL;
    ks_error err;
    cr_assert_eq(ks_engine_open(&config, NULL, &engine, &err), STATUS_INVALID_PARAMETER);
    cr_assert_not_null(strstr(err.message, "warp"), "%s", err.message);
    cr_assert_null(engine);

    engine = open_dma_engine("pool", "mask=32", 4, 4096, NULL);
    cr_assert(step(engine, KS_OP_ALLOCATE, 0, 0));
    cr_assert_eq(dma_step(engine, KS_OP_DMA_LOOPBACK, 0, &err), STATUS_INVALID_PARAMETER);
    cr_assert_str_eq(err.message, "op DMA_LOOPBACK on pin 0: k=0 must be older than the newest of 1 live frames");
    cr_assert_eq(ks_engine_stats(engine)->dma_ops, 0);
    close_engine(engine);
}

/* A planted driver bug: no syncs on streaming frames of a non-coherent device is stale data. */
Test(engine_dma, a_missing_sync_is_a_data_error_naming_op_pin_frame_and_bus)
{
    ks_engine_options options = {.dma_transfer_flags = KS_DMA_TRANSFER_NO_SYNC};
    ks_engine *engine = open_dma_engine("dma_sg", "mask=32,coherent=0,sg=1", 4, 8192, &options);
    cr_assert(step(engine, KS_OP_ALLOCATE, 0, 0));
    ks_error err;
    ks_error_clear(&err);
    cr_assert_eq(dma_step(engine, KS_OP_DMA_CAPTURE, 0, &err), STATUS_DATA_ERROR);
    cr_assert_not_null(strstr(err.message, "op DMA_CAPTURE on pin 0 k=0 (frame 0x"), "%s", err.message);
    cr_assert_not_null(strstr(err.message, ", bus 0x"), "%s", err.message);
    cr_assert_not_null(strstr(err.message, "stale data"), "%s", err.message);
    close_engine(engine);
    /* The same on a coherent device is correct: nothing needs a sync there. */
    engine = open_dma_engine("dma_sg", "mask=32,sg=1", 4, 8192, &options);
    cr_assert(step(engine, KS_OP_ALLOCATE, 0, 0));
    cr_assert_eq(dma_step(engine, KS_OP_DMA_CAPTURE, 0, &err), STATUS_SUCCESS, "%s", err.message);
    close_engine(engine);
}

Test(engine_dma, injected_faults_are_counted_not_failed)
{
    ks_engine *engine = open_dma_engine("pool", "mask=32,fault_ppm=500000,faults=device+iommu,seed=5", 4, 4096, NULL);
    cr_assert(step(engine, KS_OP_ALLOCATE, 0, 0));
    ks_error err;
    for (int i = 0; i < 40; i++)
        cr_assert_eq(dma_step(engine, KS_OP_DMA_CAPTURE, 0, &err), STATUS_SUCCESS, "op %d: %s", i, err.message);
    cr_assert_gt(ks_engine_stats(engine)->dma_injected_faults, 0);
    cr_assert_lt(ks_engine_stats(engine)->dma_injected_faults, 40);
    close_engine(engine);
}

/* An allocator that misuses the adapter: Free gives the common buffer back with the wrong size,
 * and with leak_on_free set it never gives it back at all. */
static bool leaky_dma_leaks;

typedef struct leaky_dma {
    ks_dma_adapter *adapter;
    size_t frame_bytes;
} leaky_dma;

typedef struct leaky_frame_header {
    ks_dma_addr bus;
} leaky_frame_header;

static NTSTATUS leaky_init(PVOID initial_context, PKSALLOCATOR_FRAMING framing, PVOID *context)
{
    KSPIN *pin = initial_context;
    leaky_dma *leaky = calloc(1, sizeof *leaky);
    if (pin->dma_adapter == NULL || leaky == NULL) {
        free(leaky);
        return STATUS_INVALID_PARAMETER;
    }
    leaky->adapter = pin->dma_adapter;
    leaky->frame_bytes = framing->FrameSize ? framing->FrameSize : 4096;
    *context = leaky;
    return STATUS_SUCCESS;
}

static PVOID leaky_allocate(PVOID context)
{
    leaky_dma *leaky = context;
    ks_dma_addr bus;
    uint8_t *cpu = ks_dma_alloc_coherent(leaky->adapter, leaky->frame_bytes + 64, &bus, NULL);
    if (cpu == NULL)
        return NULL;
    ((leaky_frame_header *)cpu)->bus = bus;
    return cpu + 64;
}

static void leaky_free(PVOID context, PVOID frame)
{
    leaky_dma *leaky = context;
    uint8_t *cpu = (uint8_t *)frame - 64;
    if (!leaky_dma_leaks) /* wrong size: the frame's, not the buffer's */
        ks_dma_free_coherent(leaky->adapter, leaky->frame_bytes, cpu, ((leaky_frame_header *)cpu)->bus);
}

static void leaky_delete(PVOID context)
{
    free(context);
}

static const KSALLOCATOR_DISPATCH leaky_dispatch = {.InitializeAllocator = leaky_init, .DeleteAllocator = leaky_delete,
                                                    .Allocate = leaky_allocate, .Free = leaky_free};
static const ks_allocator_entry leaky_entry = {.abi_version = KSALLOC_ABI_VERSION, .name = "leaky_dma",
                                               .dispatch = &leaky_dispatch, .caps = KS_CAP_DMA};

static ks_engine *open_leaky(void)
{
    ks_workload_config config;
    memset(&config, 0, sizeof config);
    config.pin_count = 1;
    config.pins[0].entry = &leaky_entry;
    strcpy(config.pins[0].allocator, "leaky_dma");
    config.pins[0].framing = (KSALLOCATOR_FRAMING){.Frames = 4, .FrameSize = 4096};
    config.pins[0].heap_index = -1;
    return open_engine(&config, NULL);
}

Test(engine_dma, a_checker_report_fails_the_step_that_caused_it)
{
    leaky_dma_leaks = false;
    ks_engine *engine = open_leaky();
    cr_assert(step(engine, KS_OP_ALLOCATE, 0, 0));
    ks_op op = {.kind = KS_OP_FREE, .arg = 0};
    ks_error err;
    ks_error_clear(&err);
    cr_assert_eq(ks_engine_step(engine, &op, NULL, &err), STATUS_DATA_ERROR);
    cr_assert_not_null(strstr(err.message, "FREE: 1 DMA-debug report; first: size-mismatch"), "%s", err.message);
    cr_assert_eq(ks_engine_close(engine, &err), STATUS_SUCCESS, "%s", err.message); /* reported once */
}

Test(engine_dma, a_leak_at_teardown_is_the_close_error)
{
    leaky_dma_leaks = true;
    ks_engine *engine = open_leaky();
    cr_assert(step(engine, KS_OP_ALLOCATE, 0, 0));
    step(engine, KS_OP_FREE, 0, 0); /* gives nothing back: silent until teardown */
    ks_error err;
    ks_error_clear(&err);
    cr_assert_eq(ks_engine_close(engine, &err), STATUS_DATA_ERROR);
    cr_assert_not_null(strstr(err.message, "teardown: 1 DMA-debug report; first: leak"), "%s", err.message);
}

/* The decoder's configs and ops over the DMA allocators: every op is valid and runs clean. */
Test(engine_dma, decoded_workloads_on_dma_allocators_run_clean)
{
    /* DMA allocators only: their frames live in memory the DMA layer owns (see open_dma_engine
     * on sub-page frames of other allocators). */
    const ks_allocator_entry *entries[] = {ks_catalogue_find("dma_common"), ks_catalogue_find("dma_sg"),
                                           ks_catalogue_find("dma_pool")};
    uint64_t state = 77, opened = 0, dma_ops = 0;
    static uint8_t bytes[160];
    for (int round = 0; round < 40; round++) {
        for (size_t i = 0; i < sizeof bytes; i++) {
            state = state * 6364136223846793005ull + 1442695040888963407ull;
            bytes[i] = (uint8_t)(state >> 56);
        }
        ks_byte_reader reader = {.data = bytes, .size_bytes = sizeof bytes};
        ks_workload_config config;
        ks_decode_config(&reader, entries, 3, &config);
        ks_engine *engine = NULL;
        ks_error err;
        ks_error_clear(&err);
        if (!NT_SUCCESS(ks_engine_open(&config, NULL, &engine, &err)))
            continue; /* a device that cannot serve a framing refuses it cleanly */
        opened++;
        ks_live_view view;
        ks_engine_view(engine, &view);
        ks_op op;
        while (ks_decode_op(&reader, &view, &op)) {
            cr_assert_eq(ks_engine_step(engine, &op, NULL, &err), STATUS_SUCCESS, "round %d dma %s: %s", round,
                         config.dma_options, err.message);
            ks_engine_view(engine, &view);
        }
        dma_ops += ks_engine_stats(engine)->dma_ops;
        close_engine(engine);
    }
    cr_assert_gt(opened, 20);
    cr_assert_gt(dma_ops, 0);
}

/* The hand-written DMA trace replays through the engine, op by op, clean. */
Test(engine_dma, the_hand_written_dma_trace_replays_clean)
{
    ks_trace trace;
    ks_error err;
    cr_assert_eq(ks_trace_load(KS_SOURCE_DIR "/tests/data/traces/good_dma.trace", &trace, &err), STATUS_SUCCESS, "%s",
                 err.message);
    trace.config.pins[0].entry = ks_catalogue_find(trace.config.pins[0].allocator);
    ks_engine *engine = open_engine(&trace.config, NULL);
    for (size_t i = 0; i < trace.op_count; i++) {
        bool allocated = false;
        cr_assert_eq(ks_engine_step(engine, &trace.ops[i], &allocated, &err), STATUS_SUCCESS, "op %zu: %s", i,
                     err.message);
        cr_assert_eq(allocated, trace.allocated[i] != 0, "op %zu", i);
    }
    cr_assert_eq(ks_engine_stats(engine)->dma_ops, 3);
    close_engine(engine);
    ks_trace_release(&trace);
}
