/*
 * test_generator.c -- the seeded profiles (harness/generator.c) against a model of the engine's
 * live state: determinism per seed, every op valid for the state it was generated for, the
 * shape each profile promises (fifo frees the oldest, lifo the newest, burst fills then drains,
 * random hovers near half the target, fragmenting waves over several pins), the rule that a
 * failed Allocate is followed by frees, and the pins ks_profile_config builds.
 */
#include <criterion/criterion.h>
#include <string.h>

#include "workload.h"

/* The engine's live state, modelled: counts only, plus an allocator that serves up to a
 * capacity per pin (0 = never fails). */
typedef struct model {
    ks_live_view view;
    uint32_t capacity[KS_MAX_PINS];
} model;

static void model_init(model *m, unsigned pin_count, uint32_t frames, uint32_t capacity)
{
    memset(m, 0, sizeof *m);
    m->view.pin_count = pin_count;
    for (unsigned i = 0; i < pin_count; i++) {
        m->view.frames[i] = frames;
        m->capacity[i] = capacity;
    }
}

/* Applies op to the model, asserting that it is valid for the state. */
static void model_apply(model *m, const ks_op *op, uint64_t index)
{
    cr_assert_lt(op->pin, m->view.pin_count, "op %llu: pin %u of %u", (unsigned long long)index, op->pin,
                 m->view.pin_count);
    uint32_t *live = &m->view.live[op->pin];
    switch (op->kind) {
    case KS_OP_ALLOCATE: {
        bool served = m->capacity[op->pin] == 0 || *live < m->capacity[op->pin];
        m->view.last_allocate_failed[op->pin] = !served;
        *live += served ? 1 : 0;
        break;
    }
    case KS_OP_FREE:
    case KS_OP_TOUCH:
        cr_assert_lt(op->arg, *live, "op %llu: kind %u on pin %u with k=%u but %u live", (unsigned long long)index,
                     op->kind, op->pin, op->arg, *live);
        *live -= op->kind == KS_OP_FREE ? 1 : 0;
        break;
    case KS_OP_DMA_CAPTURE:
    case KS_OP_DMA_RENDER:
        cr_assert_lt(op->arg, *live, "op %llu: DMA kind %u on pin %u with k=%u but %u live", (unsigned long long)index,
                     op->kind, op->pin, op->arg, *live);
        break;
    case KS_OP_DMA_LOOPBACK:
        cr_assert_lt(op->arg + 1, *live, "op %llu: loopback on pin %u from k=%u needs an older frame than the newest "
                     "of %u", (unsigned long long)index, op->pin, op->arg, *live);
        break;
    default: cr_assert_fail("op %llu: unknown kind %u", (unsigned long long)index, op->kind);
    }
    cr_assert_eq(op->thread, 0);
    cr_assert_eq(op->flags, 0);
}

/* Generates op_count ops into ops (may be NULL) over the model. */
static void generate(model *m, ks_profile profile, uint64_t seed, uint64_t op_count, ks_op *ops)
{
    ks_generator gen;
    ks_generator_init(&gen, profile, seed, &m->view);
    for (uint64_t i = 0; i < op_count; i++) {
        ks_op op;
        ks_generator_next(&gen, &m->view, &op);
        model_apply(m, &op, i);
        if (ops != NULL)
            ops[i] = op;
    }
}

static unsigned pins_for(ks_profile profile)
{
    /* The DMA streaming profiles are a fixed cycle per pin: on one pin the seed has nothing to
     * choose, so they get two, where it picks the pin of every op. */
    return profile == KS_PROFILE_FRAGMENTING ? 3 : ks_profile_uses_dma(profile) ? 2 : 1;
}

#define DETERMINISM_OPS 4000

Test(generator, profile_names_round_trip)
{
    for (int p = 0; p < KS_PROFILE_COUNT; p++) {
        const char *name = ks_profile_name((ks_profile)p);
        cr_assert_neq(strcmp(name, "unknown"), 0, "profile %d has no name", p);
        cr_assert_eq(ks_profile_from_name(name), (ks_profile)p, "%s", name);
    }
    cr_assert_str_eq(ks_profile_name(KS_PROFILE_FIFO), "fifo");
    cr_assert_eq(ks_profile_from_name("LIFO"), KS_PROFILE_COUNT);
    cr_assert_eq(ks_profile_from_name(""), KS_PROFILE_COUNT);
    cr_assert_eq(ks_profile_from_name(NULL), KS_PROFILE_COUNT);
    cr_assert_str_eq(ks_profile_name(KS_PROFILE_COUNT), "unknown");
}

Test(generator, same_seed_same_ops_different_seed_different_ops)
{
    static ks_op first[DETERMINISM_OPS], again[DETERMINISM_OPS], other[DETERMINISM_OPS];
    for (int p = 0; p < KS_PROFILE_COUNT; p++) {
        model m;
        model_init(&m, pins_for((ks_profile)p), 64, 0);
        generate(&m, (ks_profile)p, 42, DETERMINISM_OPS, first);
        model_init(&m, pins_for((ks_profile)p), 64, 0);
        generate(&m, (ks_profile)p, 42, DETERMINISM_OPS, again);
        model_init(&m, pins_for((ks_profile)p), 64, 0);
        generate(&m, (ks_profile)p, 43, DETERMINISM_OPS, other);
        cr_assert_eq(memcmp(first, again, sizeof first), 0, "%s: seed 42 gave two op streams",
                     ks_profile_name((ks_profile)p));
        cr_assert_neq(memcmp(first, other, sizeof first), 0, "%s: seeds 42 and 43 gave the same ops",
                      ks_profile_name((ks_profile)p));
    }
}

/* Every profile, several framings and allocator behaviours, many pins: never an invalid op. */
Test(generator, every_op_is_valid_for_the_state)
{
    const uint32_t frames_cases[] = {0, 1, 2, 64, 1000};
    const uint32_t capacity_cases[] = {0, 1, 5, 300};
    for (int p = 0; p < KS_PROFILE_COUNT; p++)
        for (size_t f = 0; f < sizeof frames_cases / sizeof frames_cases[0]; f++)
            for (size_t c = 0; c < sizeof capacity_cases / sizeof capacity_cases[0]; c++)
                for (unsigned pins = 1; pins <= KS_MAX_PINS; pins += 3) {
                    model m;
                    model_init(&m, pins, frames_cases[f], capacity_cases[c]);
                    generate(&m, (ks_profile)p, 7 + f * 31 + c, 3000, NULL);
                }
}

Test(generator, fifo_frees_only_the_oldest_and_streams_at_the_window)
{
    model m;
    model_init(&m, 1, 64, 0);
    ks_generator gen;
    ks_generator_init(&gen, KS_PROFILE_FIFO, 5, &m.view);
    uint64_t frees = 0, touches = 0, allocations_after_fill = 0;
    bool filled = false;
    for (uint64_t i = 0; i < 20000; i++) {
        ks_op op;
        ks_generator_next(&gen, &m.view, &op);
        if (op.kind == KS_OP_FREE) {
            cr_assert_eq(op.arg, 0, "op %llu: fifo freed k=%u", (unsigned long long)i, op.arg);
            cr_assert(filled, "op %llu: fifo freed before filling its window", (unsigned long long)i);
            frees++;
        }
        touches += op.kind == KS_OP_TOUCH;
        allocations_after_fill += filled && op.kind == KS_OP_ALLOCATE;
        model_apply(&m, &op, i);
        filled = filled || m.view.live[0] == 64;
        if (filled)
            cr_assert_geq(m.view.live[0], 63, "op %llu: window fell to %u", (unsigned long long)i, m.view.live[0]);
    }
    cr_assert_gt(frees, 5000);
    cr_assert(allocations_after_fill >= frees - 1 && allocations_after_fill <= frees + 1, "fifo does not alternate");
    cr_assert(touches > 1000 && touches < 5000, "fifo touched %llu times in 20000 ops", (unsigned long long)touches);
}

Test(generator, lifo_frees_only_the_newest_and_walks_between_0_and_target)
{
    model m;
    model_init(&m, 1, 100, 0);
    ks_generator gen;
    ks_generator_init(&gen, KS_PROFILE_LIFO, 9, &m.view);
    unsigned reached_target = 0, reached_zero = 0;
    for (uint64_t i = 0; i < 50000; i++) {
        ks_op op;
        ks_generator_next(&gen, &m.view, &op);
        cr_assert_neq(op.kind, KS_OP_TOUCH);
        if (op.kind == KS_OP_FREE)
            cr_assert_eq(op.arg, m.view.live[0] - 1, "op %llu: lifo freed k=%u of %u", (unsigned long long)i, op.arg,
                         m.view.live[0]);
        uint32_t before = m.view.live[0];
        model_apply(&m, &op, i);
        cr_assert_leq(m.view.live[0], 100);
        reached_target += before != 100 && m.view.live[0] == 100;
        reached_zero += before != 0 && m.view.live[0] == 0;
    }
    cr_assert_geq(reached_target, 5, "lifo reached its target %u times", reached_target);
    cr_assert_geq(reached_zero, 5, "lifo emptied %u times", reached_zero);
}

Test(generator, burst_fills_to_target_then_drains_to_zero)
{
    model m;
    model_init(&m, 1, 0, 0); /* no Frames: target 256 */
    ks_generator gen;
    ks_generator_init(&gen, KS_PROFILE_BURST, 3, &m.view);
    cr_assert_eq(gen.target_live[0], 256);
    unsigned cycles = 0;
    bool draining = false;
    uint32_t last_k_sum = 0;
    for (uint64_t i = 0; i < 20000; i++) {
        ks_op op;
        ks_generator_next(&gen, &m.view, &op);
        cr_assert_neq(op.kind, KS_OP_TOUCH);
        if (!draining && op.kind == KS_OP_FREE) {
            cr_assert_eq(m.view.live[0], 256, "op %llu: drain started at %u live", (unsigned long long)i,
                         m.view.live[0]);
            draining = true;
        }
        if (draining && op.kind == KS_OP_ALLOCATE) {
            cr_assert_eq(m.view.live[0], 0, "op %llu: fill started at %u live", (unsigned long long)i, m.view.live[0]);
            draining = false;
            cycles++;
        }
        if (op.kind == KS_OP_FREE)
            last_k_sum += op.arg;
        model_apply(&m, &op, i);
    }
    cr_assert_geq(cycles, 30);
    cr_assert_gt(last_k_sum, 0, "burst always freed k=0: not random order");
}

Test(generator, burst_drains_when_the_allocator_runs_dry)
{
    model m;
    model_init(&m, 1, 64, 10); /* promises 64, serves 10 */
    ks_generator gen;
    ks_generator_init(&gen, KS_PROFILE_BURST, 3, &m.view);
    uint32_t peak = 0;
    for (uint64_t i = 0; i < 2000; i++) {
        ks_op op;
        ks_generator_next(&gen, &m.view, &op);
        model_apply(&m, &op, i);
        peak = m.view.live[0] > peak ? m.view.live[0] : peak;
    }
    cr_assert_eq(peak, 10);
}

Test(generator, random_hovers_near_half_the_target)
{
    model m;
    model_init(&m, 1, 200, 0);
    ks_generator gen;
    ks_generator_init(&gen, KS_PROFILE_RANDOM, 11, &m.view);
    uint64_t live_sum = 0, kinds[3] = {0};
    const uint64_t ops = 40000;
    for (uint64_t i = 0; i < ops; i++) {
        ks_op op;
        ks_generator_next(&gen, &m.view, &op);
        kinds[op.kind]++;
        model_apply(&m, &op, i);
        live_sum += m.view.live[0];
    }
    uint64_t mean = live_sum / ops;
    cr_assert(mean >= 70 && mean <= 140, "random's mean live is %llu, target 200", (unsigned long long)mean);
    cr_assert(kinds[KS_OP_TOUCH] > ops / 20, "random touched only %llu times", (unsigned long long)kinds[2]);
    cr_assert(kinds[KS_OP_ALLOCATE] > ops * 2 / 5 && kinds[KS_OP_ALLOCATE] < ops * 3 / 5, "allocations: %llu",
              (unsigned long long)kinds[0]);
}

Test(generator, fragmenting_uses_every_pin_and_their_live_sets_wave)
{
    model m;
    model_init(&m, 3, 64, 0);
    ks_generator gen;
    ks_generator_init(&gen, KS_PROFILE_FRAGMENTING, 17, &m.view);
    uint32_t low[3] = {UINT32_MAX, UINT32_MAX, UINT32_MAX}, high[3] = {0};
    uint64_t ops_on_pin[3] = {0}, random_k = 0;
    for (uint64_t i = 0; i < 30000; i++) {
        ks_op op;
        ks_generator_next(&gen, &m.view, &op);
        ops_on_pin[op.pin]++;
        random_k += op.kind == KS_OP_FREE && op.arg != 0 && op.arg + 1 != m.view.live[op.pin];
        model_apply(&m, &op, i);
        if (i > 2000) { /* past the first rise */
            low[op.pin] = m.view.live[op.pin] < low[op.pin] ? m.view.live[op.pin] : low[op.pin];
            high[op.pin] = m.view.live[op.pin] > high[op.pin] ? m.view.live[op.pin] : high[op.pin];
        }
    }
    for (unsigned pin = 0; pin < 3; pin++) {
        cr_assert_gt(ops_on_pin[pin], 8000, "pin %u got %llu ops", pin, (unsigned long long)ops_on_pin[pin]);
        cr_assert_gt(high[pin] - low[pin], 32, "pin %u live stayed between %u and %u", pin, low[pin], high[pin]);
    }
    cr_assert_gt(random_k, 1000, "fragmenting frees are not random");
}

/* After a NULL, a pin with frames live gets a FREE (or a TOUCH), never another ALLOCATE. */
Test(generator, a_failed_allocate_is_followed_by_frees)
{
    for (int p = 0; p < KS_PROFILE_COUNT; p++) {
        model m;
        model_init(&m, pins_for((ks_profile)p), 64, 7);
        ks_generator gen;
        ks_generator_init(&gen, (ks_profile)p, 21, &m.view);
        uint64_t failures_checked = 0;
        for (uint64_t i = 0; i < 5000; i++) {
            ks_op op;
            ks_generator_next(&gen, &m.view, &op);
            if (m.view.last_allocate_failed[op.pin] && m.view.live[op.pin] > 0) {
                cr_assert_neq(op.kind, KS_OP_ALLOCATE, "%s op %llu: allocated again after a NULL with %u live",
                              ks_profile_name((ks_profile)p), (unsigned long long)i, m.view.live[op.pin]);
                failures_checked++;
            }
            model_apply(&m, &op, i);
        }
        cr_assert_gt(failures_checked, 0, "%s never met a failed allocate", ks_profile_name((ks_profile)p));
    }
}

Test(generator, targets_follow_frames_capped_at_256)
{
    model m;
    model_init(&m, 4, 0, 0);
    m.view.frames[1] = 1;
    m.view.frames[2] = 100;
    m.view.frames[3] = 100000;
    ks_generator gen;
    ks_generator_init(&gen, KS_PROFILE_RANDOM, 1, &m.view);
    cr_assert_eq(gen.pin_count, 4);
    cr_assert_eq(gen.target_live[0], 256);
    cr_assert_eq(gen.target_live[1], 1);
    cr_assert_eq(gen.target_live[2], 100);
    cr_assert_eq(gen.target_live[3], 256);
}

/* ---- ks_profile_config ---------------------------------------------------------------------- */

static const KSALLOCATOR_DISPATCH no_dispatch;

static ks_allocator_entry make_entry(ULONG caps, size_t max_frame_bytes)
{
    ks_allocator_entry entry = {.abi_version = KSALLOC_ABI_VERSION, .struct_bytes = sizeof entry,
                                .name = "model", .description = "profile config test", .caps = caps,
                                .max_frame_bytes = max_frame_bytes, .dispatch = &no_dispatch};
    return entry;
}

static KSALLOCATOR_FRAMING make_framing(ULONG frames, ULONG frame_bytes, ULONG align_mask)
{
    KSALLOCATOR_FRAMING framing = {.Frames = frames, .FrameSize = frame_bytes, .FileAlignment = align_mask};
    framing.RequirementsFlags = KSALLOCATOR_REQUIREMENTF_MUST_ALLOCATE;
    return framing;
}

Test(profile_config, single_pin_profiles_copy_the_framing)
{
    ks_allocator_entry entry = make_entry(KS_CAP_SHARED_HEAP, 0);
    KSALLOCATOR_FRAMING base = make_framing(64, 4096, 63);
    for (int p = 0; p < KS_PROFILE_FRAGMENTING; p++) {
        ks_workload_config config;
        memset(&config, 0xAB, sizeof config);
        cr_assert_eq(ks_profile_config((ks_profile)p, &entry, "plugin:/x/y.so", &base, &config, NULL), STATUS_SUCCESS);
        cr_assert_eq(config.pin_count, 1);
        cr_assert_eq(config.heap_count, 0);
        cr_assert_eq(config.pins[0].entry, &entry);
        cr_assert_str_eq(config.pins[0].allocator, "plugin:/x/y.so");
        cr_assert_eq(memcmp(&config.pins[0].framing, &base, sizeof base), 0);
        cr_assert_eq(config.pins[0].heap_index, -1);
    }
}

Test(profile_config, fragmenting_mixes_sizes_on_a_shared_heap)
{
    ks_allocator_entry entry = make_entry(KS_CAP_SHARED_HEAP, 0);
    KSALLOCATOR_FRAMING base = make_framing(64, 4096, 63);
    ks_workload_config config;
    ks_error err;
    cr_assert_eq(ks_profile_config(KS_PROFILE_FRAGMENTING, &entry, NULL, &base, &config, &err), STATUS_SUCCESS);
    cr_assert_eq(config.pin_count, 3);
    cr_assert_eq(config.pins[0].framing.FrameSize, 4096);
    cr_assert_eq(config.pins[1].framing.FrameSize, 1024);
    cr_assert_eq(config.pins[2].framing.FrameSize, 12288); /* 3 * 4096 - 1 rounded up to 64 */
    cr_assert_eq(config.heap_count, 1);
    /* 2 x 64 x (4096 + 1024 + 12288) = 2228224, below the 4 MiB floor */
    cr_assert_eq(config.heap_bytes[0], (size_t)4 << 20);
    for (unsigned i = 0; i < 3; i++) {
        cr_assert_eq(config.pins[i].heap_index, 0);
        cr_assert_str_eq(config.pins[i].allocator, "model");
        cr_assert_eq(config.pins[i].framing.FileAlignment, 63);
        cr_assert_eq(config.pins[i].framing.Frames, 64);
        cr_assert_eq(config.pins[i].framing.RequirementsFlags, KSALLOCATOR_REQUIREMENTF_MUST_ALLOCATE);
    }
}

Test(profile_config, fragmenting_sizes_the_heap_for_twice_the_frames)
{
    ks_allocator_entry entry = make_entry(KS_CAP_SHARED_HEAP, 0);
    KSALLOCATOR_FRAMING base = make_framing(0, 100, 0); /* Frames 0 counts as 256 */
    ks_workload_config config;
    cr_assert_eq(ks_profile_config(KS_PROFILE_FRAGMENTING, &entry, "model", &base, &config, NULL), STATUS_SUCCESS);
    cr_assert_eq(config.pins[0].framing.FrameSize, 100);
    cr_assert_eq(config.pins[1].framing.FrameSize, 64);
    cr_assert_eq(config.pins[2].framing.FrameSize, 299, "odd size kept with byte alignment");
    base = make_framing(1000, 65536, 4095);
    cr_assert_eq(ks_profile_config(KS_PROFILE_FRAGMENTING, &entry, "model", &base, &config, NULL), STATUS_SUCCESS);
    cr_assert_eq(config.pins[1].framing.FrameSize, 16384);
    cr_assert_eq(config.pins[2].framing.FrameSize, 196608);
    cr_assert_eq(config.heap_bytes[0], (size_t)2 * 1000 * (65536 + 16384 + 196608));
}

Test(profile_config, fragmenting_without_shared_heap_cap_uses_private_heaps)
{
    ks_allocator_entry entry = make_entry(0, 8192);
    KSALLOCATOR_FRAMING base = make_framing(16, 4096, 7);
    ks_workload_config config;
    cr_assert_eq(ks_profile_config(KS_PROFILE_FRAGMENTING, &entry, "model", &base, &config, NULL), STATUS_SUCCESS);
    cr_assert_eq(config.heap_count, 0);
    for (unsigned i = 0; i < 3; i++)
        cr_assert_eq(config.pins[i].heap_index, -1);
    cr_assert_eq(config.pins[2].framing.FrameSize, 8192, "clamped to max_frame_bytes");
}

Test(profile_config, rejects_bad_arguments_with_a_message)
{
    ks_allocator_entry entry = make_entry(KS_CAP_SHARED_HEAP, 0);
    KSALLOCATOR_FRAMING base = make_framing(64, 4096, 5);
    ks_workload_config config;
    ks_error err;
    cr_assert_eq(ks_profile_config(KS_PROFILE_LIFO, &entry, "model", &base, &config, &err), STATUS_INVALID_PARAMETER);
    cr_assert_not_null(strstr(err.message, "0x5"), "%s", err.message);
    base.FileAlignment = 63;
    cr_assert_eq(ks_profile_config(KS_PROFILE_LIFO, NULL, "model", &base, &config, &err), STATUS_INVALID_PARAMETER);
    cr_assert_eq(ks_profile_config(KS_PROFILE_COUNT, &entry, "model", &base, &config, &err), STATUS_INVALID_PARAMETER);
    char long_name[KS_ALLOCATOR_NAME_BYTES + 1];
    memset(long_name, 'a', sizeof long_name - 1);
    long_name[sizeof long_name - 1] = '\0';
    cr_assert_eq(ks_profile_config(KS_PROFILE_LIFO, &entry, long_name, &base, &config, &err), STATUS_INVALID_PARAMETER);
    base = make_framing(UINT32_MAX, UINT32_MAX, 0);
    cr_assert_eq(ks_profile_config(KS_PROFILE_FRAGMENTING, &entry, "model", &base, &config, &err),
                 STATUS_INVALID_PARAMETER, "3 x 4 GiB does not fit a ULONG");
}
