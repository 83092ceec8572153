/*
 * test_decode.c -- the fuzz decoder (harness/decode.c): the byte reader never reads past its
 * input (a guard page after the data would fault) and yields zeros there; configs stay within
 * the tables and what each entry serves; and over 10,000 random inputs every decoded op is valid
 * for the state it was decoded against.
 */
#include <criterion/criterion.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "workload.h"

/* xoshiro256** (Blackman and Vigna), seeded by splitmix64: the tests' own random inputs. */
typedef struct xoshiro {
    uint64_t s[4];
} xoshiro;

static uint64_t rotl(uint64_t x, int k)
{
    return (x << k) | (x >> (64 - k));
}

static void xoshiro_seed(xoshiro *rng, uint64_t seed)
{
    for (int i = 0; i < 4; i++) {
        uint64_t z = (seed += 0x9E3779B97F4A7C15ull);
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
        rng->s[i] = z ^ (z >> 31);
    }
}

static uint64_t xoshiro_next(xoshiro *rng)
{
    uint64_t *s = rng->s;
    uint64_t result = rotl(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
}

/* Input bytes that end exactly where a PROT_NONE page begins: any read past the end faults. */
typedef struct guarded_input {
    uint8_t *mapping;
    size_t mapping_bytes;
    uint8_t *data;
} guarded_input;

static void guarded_init(guarded_input *input, size_t max_bytes)
{
    size_t page_bytes = (size_t)sysconf(_SC_PAGESIZE);
    size_t data_pages = (max_bytes + page_bytes - 1) / page_bytes + 1;
    input->mapping_bytes = (data_pages + 1) * page_bytes;
    input->mapping = mmap(NULL, input->mapping_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    cr_assert_neq(input->mapping, MAP_FAILED);
    input->data = input->mapping + data_pages * page_bytes;
    cr_assert_eq(mprotect(input->data, page_bytes, PROT_NONE), 0);
}

/* Places bytes so that they end at the guard page; returns where they start. */
static const uint8_t *guarded_place(guarded_input *input, const uint8_t *bytes, size_t size_bytes)
{
    uint8_t *start = input->data - size_bytes;
    if (size_bytes > 0)
        memcpy(start, bytes, size_bytes);
    return start;
}

static void guarded_release(guarded_input *input)
{
    munmap(input->mapping, input->mapping_bytes);
}

Test(reader, reads_in_order_then_zeros_past_the_end)
{
    guarded_input input;
    guarded_init(&input, 16);
    const uint8_t bytes[] = {0x11, 0x22, 0x33, 0x44, 0x55, 0x66};
    ks_byte_reader reader = {.data = guarded_place(&input, bytes, sizeof bytes), .size_bytes = sizeof bytes};
    cr_assert_eq(ks_reader_u8(&reader), 0x11);
    cr_assert_eq(ks_reader_u32(&reader), 0x55443322u, "u32 is little-endian");
    cr_assert_not(ks_reader_done(&reader));
    cr_assert_eq(ks_reader_u32(&reader), 0x66u, "the missing bytes read as zero");
    cr_assert(ks_reader_done(&reader));
    cr_assert_eq(reader.offset, sizeof bytes, "offset stops at the end");
    for (int i = 0; i < 100; i++) {
        cr_assert_eq(ks_reader_u8(&reader), 0);
        cr_assert_eq(ks_reader_below(&reader, 1000000), 0);
    }
    cr_assert_eq(reader.offset, sizeof bytes);
    guarded_release(&input);
}

Test(reader, empty_input_is_all_zeros)
{
    ks_byte_reader reader = {.data = NULL, .size_bytes = 0};
    cr_assert(ks_reader_done(&reader));
    cr_assert_eq(ks_reader_u8(&reader), 0);
    cr_assert_eq(ks_reader_u32(&reader), 0);
    cr_assert_eq(ks_reader_below(&reader, 77), 0);
}

Test(reader, below_uses_as_few_bytes_as_the_bound_needs)
{
    const uint8_t bytes[8] = {0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF};
    const struct {
        uint32_t bound;
        size_t bytes_used;
    } cases[] = {{1, 0}, {2, 1}, {256, 1}, {257, 2}, {65536, 2}, {65537, 3}, {1u << 24, 3}, {(1u << 24) + 1, 4},
                 {UINT32_MAX, 4}};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        ks_byte_reader reader = {.data = bytes, .size_bytes = sizeof bytes};
        uint32_t value = ks_reader_below(&reader, cases[i].bound);
        cr_assert_lt(value, cases[i].bound == 0 ? 1 : cases[i].bound);
        cr_assert_eq(reader.offset, cases[i].bytes_used, "bound %u used %zu bytes", cases[i].bound, reader.offset);
    }
    ks_byte_reader reader = {.data = (const uint8_t[]){200}, .size_bytes = 1};
    cr_assert_eq(ks_reader_below(&reader, 64), 200 % 64);
}

Test(reader, never_reads_past_the_end_for_any_sequence_of_reads)
{
    guarded_input input;
    guarded_init(&input, 64);
    xoshiro rng;
    xoshiro_seed(&rng, 1);
    uint8_t bytes[64];
    for (int round = 0; round < 2000; round++) {
        size_t size_bytes = xoshiro_next(&rng) % (sizeof bytes + 1);
        for (size_t i = 0; i < size_bytes; i++)
            bytes[i] = (uint8_t)xoshiro_next(&rng);
        ks_byte_reader reader = {.data = guarded_place(&input, bytes, size_bytes), .size_bytes = size_bytes};
        for (int read = 0; read < 40; read++) {
            switch (xoshiro_next(&rng) % 3) {
            case 0: ks_reader_u8(&reader); break;
            case 1: ks_reader_u32(&reader); break;
            default: {
                uint32_t bound = (uint32_t)(xoshiro_next(&rng) >> (xoshiro_next(&rng) % 64)) | 1u;
                cr_assert_lt(ks_reader_below(&reader, bound), bound);
            }
            }
            cr_assert_leq(reader.offset, size_bytes);
        }
    }
    guarded_release(&input);
}

/* ---- ks_decode_config ----------------------------------------------------------------------- */

static const KSALLOCATOR_DISPATCH no_dispatch;
static const ks_allocator_entry shared_entry = {.abi_version = KSALLOC_ABI_VERSION, .name = "sharer",
                                                .caps = KS_CAP_SHARED_HEAP, .dispatch = &no_dispatch};
static const ks_allocator_entry other_sharer = {.abi_version = KSALLOC_ABI_VERSION, .name = "other-sharer",
                                                .caps = KS_CAP_SHARED_HEAP, .dispatch = &no_dispatch};
static const ks_allocator_entry limited_entry = {.abi_version = KSALLOC_ABI_VERSION, .name = "limited",
                                                 .max_frame_bytes = 4000, .max_align_bytes = 48,
                                                 .dispatch = &no_dispatch};

static bool in_table(uint32_t value, const uint32_t *table, size_t count)
{
    for (size_t i = 0; i < count; i++)
        if (table[i] == value)
            return true;
    return false;
}

static void check_config(const ks_workload_config *config, const ks_allocator_entry *const *entries, size_t count)
{
    static const uint32_t sizes[] = {0, 1, 8, 24, 64, 100, 512, 4096, 4100, 65536, 1u << 20};
    static const uint32_t masks[] = {0, 7, 15, 63, 255, 4095};
    cr_assert(config->pin_count >= 1 && config->pin_count <= 4, "pin_count %u", config->pin_count);
    cr_assert_leq(config->heap_count, 1);
    const ks_allocator_entry *heap_owner = NULL;
    for (unsigned i = 0; i < config->pin_count; i++) {
        const ks_pin_config *pin = &config->pins[i];
        const ks_allocator_entry *entry = entries[i % count];
        cr_assert_eq(pin->entry, entry);
        cr_assert_str_eq(pin->allocator, entry->name);
        const KSALLOCATOR_FRAMING *framing = &pin->framing;
        cr_assert(ks_framing_align_valid(framing), "pin %u mask 0x%x", i, framing->FileAlignment);
        cr_assert_leq(framing->Frames, 64);
        cr_assert_eq(framing->RequirementsFlags & ~KSALLOCATOR_REQUIREMENTF_MUST_ALLOCATE, 0);
        if (entry->max_frame_bytes == 0)
            cr_assert(in_table(framing->FrameSize, sizes, 11), "size %u", framing->FrameSize);
        else
            cr_assert_leq(framing->FrameSize, entry->max_frame_bytes);
        if (entry->max_align_bytes == 0)
            cr_assert(in_table(framing->FileAlignment, masks, 6), "mask %u", framing->FileAlignment);
        else
            cr_assert_leq(framing->FileAlignment + 1u, entry->max_align_bytes);
        if (pin->heap_index == 0) {
            cr_assert(entry->caps & KS_CAP_SHARED_HEAP);
            cr_assert(heap_owner == NULL || heap_owner == entry, "two allocator families on heap 0");
            heap_owner = entry;
        } else {
            cr_assert_eq(pin->heap_index, -1);
        }
    }
    cr_assert_eq(config->heap_count, heap_owner ? 1u : 0u);
    if (heap_owner)
        cr_assert_eq(config->heap_bytes[0], (size_t)8 << 20);
}

Test(decode_config, random_inputs_give_valid_configs)
{
    const ks_allocator_entry *const mixes[][3] = {{&shared_entry, NULL, NULL},
                                                  {&limited_entry, NULL, NULL},
                                                  {&shared_entry, &other_sharer, &limited_entry}};
    const size_t mix_counts[] = {1, 1, 3};
    xoshiro rng;
    xoshiro_seed(&rng, 2);
    bool saw_heap = false, saw_must = false, saw_four_pins = false, saw_clamped = false;
    for (int round = 0; round < 10000; round++) {
        uint8_t bytes[32];
        for (size_t i = 0; i < sizeof bytes; i++)
            bytes[i] = (uint8_t)xoshiro_next(&rng);
        size_t mix = (size_t)round % 3;
        ks_byte_reader reader = {.data = bytes, .size_bytes = xoshiro_next(&rng) % (sizeof bytes + 1)};
        ks_workload_config config;
        ks_decode_config(&reader, mixes[mix], mix_counts[mix], &config);
        check_config(&config, mixes[mix], mix_counts[mix]);
        saw_heap |= config.heap_count == 1;
        saw_four_pins |= config.pin_count == 4;
        saw_must |= (config.pins[0].framing.RequirementsFlags & KSALLOCATOR_REQUIREMENTF_MUST_ALLOCATE) != 0;
        saw_clamped |= config.pins[0].entry == &limited_entry && config.pins[0].framing.FrameSize == 4000;
    }
    cr_assert(saw_heap && saw_must && saw_four_pins && saw_clamped, "the decoder does not reach every field");
}

Test(decode_config, clamps_alignment_to_a_power_of_two_within_the_limit)
{
    /* pin count 1; size index 0; align index 5 (4095) ; frames 0; flags 0 */
    const uint8_t bytes[] = {0, 0, 5, 0, 0};
    const ks_allocator_entry *entries[] = {&limited_entry};
    ks_byte_reader reader = {.data = bytes, .size_bytes = sizeof bytes};
    ks_workload_config config;
    ks_decode_config(&reader, entries, 1, &config);
    cr_assert_eq(config.pin_count, 1);
    cr_assert_eq(config.pins[0].framing.FileAlignment, 31, "48-byte limit gives 32-byte alignment");
}

Test(decode_config, empty_input_decodes_one_plain_pin)
{
    const ks_allocator_entry *entries[] = {&shared_entry};
    ks_byte_reader reader = {.data = NULL, .size_bytes = 0};
    ks_workload_config config;
    ks_decode_config(&reader, entries, 1, &config);
    cr_assert_eq(config.pin_count, 1);
    cr_assert_eq(config.pins[0].framing.FrameSize, 0);
    cr_assert_eq(config.pins[0].framing.Frames, 0);
    cr_assert_eq(config.pins[0].heap_index, -1);
    cr_assert_eq(config.heap_count, 0);
}

/* ---- ks_decode_op --------------------------------------------------------------------------- */

Test(decode_op, ten_thousand_random_inputs_give_only_valid_ops)
{
    xoshiro rng;
    xoshiro_seed(&rng, 3);
    static uint8_t bytes[512];
    uint64_t kinds[3] = {0};
    for (int round = 0; round < 10000; round++) {
        size_t size_bytes = xoshiro_next(&rng) % (sizeof bytes + 1);
        for (size_t i = 0; i < size_bytes; i++)
            bytes[i] = (uint8_t)xoshiro_next(&rng);
        ks_byte_reader reader = {.data = bytes, .size_bytes = size_bytes};
        ks_live_view view = {.pin_count = 1 + (unsigned)(xoshiro_next(&rng) % KS_MAX_PINS)};
        uint32_t capacity = (uint32_t)(xoshiro_next(&rng) % 40); /* 0: never fails */
        ks_op op;
        size_t ops = 0;
        while (ks_decode_op(&reader, &view, &op)) {
            cr_assert_lt(++ops, size_bytes + 1, "more ops than input bytes");
            cr_assert_lt(op.pin, view.pin_count);
            cr_assert_lt(op.kind, 3);
            cr_assert_eq(op.thread, 0);
            cr_assert_eq(op.flags, 0);
            kinds[op.kind]++;
            uint32_t *live = &view.live[op.pin];
            if (op.kind == KS_OP_ALLOCATE) {
                cr_assert_eq(op.arg, 0);
                bool served = capacity == 0 || *live < capacity;
                view.last_allocate_failed[op.pin] = !served;
                *live += served;
            } else {
                cr_assert_lt(op.arg, *live, "k=%u with %u live", op.arg, *live);
                *live -= op.kind == KS_OP_FREE;
            }
        }
        cr_assert(ks_reader_done(&reader));
        cr_assert_leq(reader.offset, size_bytes);
    }
    cr_assert(kinds[0] > kinds[1] && kinds[1] > kinds[2] && kinds[2] > 0, "allocate %llu free %llu touch %llu",
              (unsigned long long)kinds[0], (unsigned long long)kinds[1], (unsigned long long)kinds[2]);
}

Test(decode_op, free_on_an_empty_pin_becomes_allocate)
{
    /* 0x04: kind FREE, pin 0; 0x0F: TOUCH on pin 1 */
    const uint8_t bytes[] = {0x04, 0x0F};
    ks_byte_reader reader = {.data = bytes, .size_bytes = sizeof bytes};
    ks_live_view view = {.pin_count = 2};
    ks_op op;
    cr_assert(ks_decode_op(&reader, &view, &op));
    cr_assert_eq(op.kind, KS_OP_ALLOCATE);
    cr_assert_eq(op.pin, 0);
    cr_assert(ks_decode_op(&reader, &view, &op));
    cr_assert_eq(op.kind, KS_OP_ALLOCATE);
    cr_assert_eq(op.pin, 1);
    cr_assert_not(ks_decode_op(&reader, &view, &op), "the input is used up");
}

Test(decode_op, k_comes_from_the_next_bytes_below_live)
{
    /* FREE on pin 0 (live 300: k takes two bytes, 0x0102 = 258), then TOUCH pin 0 k = 0x05 % 299 */
    const uint8_t bytes[] = {0x04, 0x02, 0x01, 0x07, 0x05, 0x00};
    ks_byte_reader reader = {.data = bytes, .size_bytes = 5};
    ks_live_view view = {.pin_count = 1, .live = {300}};
    ks_op op;
    cr_assert(ks_decode_op(&reader, &view, &op));
    cr_assert_eq(op.kind, KS_OP_FREE);
    cr_assert_eq(op.arg, 258);
    view.live[0] = 299;
    cr_assert(ks_decode_op(&reader, &view, &op));
    cr_assert_eq(op.kind, KS_OP_TOUCH);
    cr_assert_eq(op.arg, 5, "the missing high byte reads as zero");
    cr_assert_not(ks_decode_op(&reader, &view, &op));
}

/* ---- DMA ------------------------------------------------------------------------------------ */

Test(decode_op, with_a_device_dma_ops_are_valid_for_the_state)
{
    xoshiro rng;
    xoshiro_seed(&rng, 11);
    static uint8_t bytes[512];
    uint64_t dma_kinds[3] = {0};
    for (int round = 0; round < 5000; round++) {
        size_t size_bytes = xoshiro_next(&rng) % (sizeof bytes + 1);
        for (size_t i = 0; i < size_bytes; i++)
            bytes[i] = (uint8_t)xoshiro_next(&rng);
        ks_byte_reader reader = {.data = bytes, .size_bytes = size_bytes};
        ks_live_view view = {.pin_count = 1 + (unsigned)(xoshiro_next(&rng) % KS_MAX_PINS), .dma = true};
        ks_op op;
        while (ks_decode_op(&reader, &view, &op)) {
            cr_assert_lt(op.pin, view.pin_count);
            uint32_t *live = &view.live[op.pin];
            if (op.kind == KS_OP_ALLOCATE) {
                *live += 1;
            } else if (op.kind == KS_OP_FREE || op.kind == KS_OP_TOUCH) {
                cr_assert_lt(op.arg, *live);
                *live -= op.kind == KS_OP_FREE;
            } else {
                cr_assert(op.kind >= KS_OP_DMA_FIRST && op.kind <= KS_OP_DMA_LAST, "kind %u", op.kind);
                uint32_t older_than = op.kind == KS_OP_DMA_LOOPBACK ? *live - 1 : *live;
                cr_assert_lt(op.arg, older_than, "kind %u k=%u with %u live", op.kind, op.arg, *live);
                dma_kinds[op.kind - KS_OP_DMA_FIRST]++;
            }
        }
    }
    for (unsigned i = 0; i < 3; i++)
        cr_assert_gt(dma_kinds[i], 0, "DMA kind %u never decoded", KS_OP_DMA_FIRST + i);
}

Test(decode_op, without_a_device_no_dma_op_and_the_old_mapping)
{
    /* 0x06 was FREE before DMA existed and stays FREE without a device; with one it is a DMA op. */
    const uint8_t bytes[] = {0x06, 0x00};
    ks_live_view view = {.pin_count = 1, .live = {1}};
    ks_byte_reader reader = {.data = bytes, .size_bytes = 1};
    ks_op op;
    cr_assert(ks_decode_op(&reader, &view, &op));
    cr_assert_eq(op.kind, KS_OP_FREE);
    view.dma = true;
    reader = (ks_byte_reader){.data = bytes, .size_bytes = sizeof bytes};
    cr_assert(ks_decode_op(&reader, &view, &op));
    cr_assert_eq(op.kind, KS_OP_DMA_CAPTURE);
}

Test(decode_config, a_dma_entry_gets_device_options_and_others_none)
{
    static const ks_allocator_entry dma_entry = {.abi_version = KSALLOC_ABI_VERSION, .name = "dma-like",
                                                 .dispatch = &no_dispatch, .caps = KS_CAP_DMA};
    const ks_allocator_entry *dma_entries[] = {&dma_entry};
    const ks_allocator_entry *plain_entries[] = {&limited_entry};
    const uint8_t bytes[] = {0, 7, 0, 4, 0, 3};
    ks_byte_reader reader = {.data = bytes, .size_bytes = sizeof bytes};
    ks_workload_config config;
    ks_decode_config(&reader, dma_entries, 1, &config);
    cr_assert_neq(config.dma_options[0], '\0');
    cr_assert_not_null(strstr(config.dma_options, "mask="), "%s", config.dma_options);
    reader = (ks_byte_reader){.data = bytes, .size_bytes = sizeof bytes};
    ks_decode_config(&reader, plain_entries, 1, &config);
    cr_assert_eq(config.dma_options[0], '\0');
}

/* ---- ks_decode_fit_heaps ------------------------------------------------------------------ */

#include "catalogue.h"

/* Runs the decoded ops of one input on engine a (the fitted heap) and engine b (the decoder's
 * 8 MiB) in lock step; false, with the op index, at the first Allocate whose outcome differs. */
static bool same_outcomes(ks_engine *a, ks_engine *b, ks_byte_reader *reader, unsigned *diverged_at)
{
    ks_live_view view;
    ks_op op;
    for (unsigned index = 0; index < 400; index++) {
        ks_engine_view(a, &view);
        if (!ks_decode_op(reader, &view, &op))
            return true;
        bool got_a = false, got_b = false;
        cr_assert_eq(ks_engine_step(a, &op, &got_a, NULL), STATUS_SUCCESS);
        cr_assert_eq(ks_engine_step(b, &op, &got_b, NULL), STATUS_SUCCESS);
        if (got_a != got_b) {
            *diverged_at = index;
            return false;
        }
    }
    return true;
}

/* The fitted heap is what lets fuzz_alloc_buddy skip walking 8 MiB: it must never change an
 * allocation's outcome. Random inputs against the real buddy and tlsf, both heap sizes. */
Test(decode_fit_heaps, fitted_heaps_give_the_same_outcomes_as_8_mib, .timeout = 120)
{
    const char *const names[] = {"buddy", "tlsf"};
    xoshiro rng;
    xoshiro_seed(&rng, 9);
    unsigned shrunk = 0;
    for (int round = 0; round < 600; round++) {
        ks_allocator_entry capped = *ks_catalogue_find(names[round % 2]);
        capped.max_frame_bytes = KS_FUZZ_MAX_FRAME_BYTES;
        const ks_allocator_entry *entries[] = {&capped};
        uint8_t bytes[160];
        for (size_t i = 0; i < sizeof bytes; i++)
            bytes[i] = (uint8_t)xoshiro_next(&rng);
        bytes[0] |= 0x03; /* several pins, so that they share the heap more often */
        ks_byte_reader reader = {.data = bytes, .size_bytes = sizeof bytes};
        ks_workload_config wide, fitted;
        ks_decode_config(&reader, entries, 1, &wide);
        if (wide.heap_count == 0)
            continue;
        fitted = wide;
        ks_decode_fit_heaps(&fitted, sizeof bytes - reader.offset);
        cr_assert_leq(fitted.heap_bytes[0], wide.heap_bytes[0], "a heap never grows");
        if (fitted.heap_bytes[0] == wide.heap_bytes[0])
            continue;
        shrunk++;
        ks_engine *a = NULL, *b = NULL;
        ks_engine_options options = {0};
        if (!NT_SUCCESS(ks_engine_open(&fitted, &options, &a, NULL)))
            continue; /* the framing itself is refused: the same for both, nothing to compare */
        cr_assert_eq(ks_engine_open(&wide, &options, &b, NULL), STATUS_SUCCESS, "round %d: only the fitted opened",
                     round);
        unsigned at = 0;
        ks_byte_reader ops_a = reader;
        bool same = same_outcomes(a, b, &ops_a, &at);
        ks_engine_close(a, NULL);
        ks_engine_close(b, NULL);
        cr_assert(same, "round %d (%s): heap %zu vs %zu bytes: op %u's Allocate differs", round, names[round % 2],
                  fitted.heap_bytes[0], wide.heap_bytes[0], at);
    }
    cr_assert_gt(shrunk, 100u, "too few inputs exercised a fitted heap (%u)", shrunk);
}

Test(decode_fit_heaps, an_input_that_could_fill_8_mib_keeps_it)
{
    ks_workload_config config;
    memset(&config, 0, sizeof config);
    config.pin_count = 1;
    config.heap_count = 1;
    config.heap_bytes[0] = (size_t)8 << 20;
    config.pins[0].heap_index = 0;
    config.pins[0].framing.FrameSize = 4096;
    ks_decode_fit_heaps(&config, 100);
    cr_assert_lt(config.heap_bytes[0], (size_t)8 << 20, "100 ops of 4 KiB frames do not need 8 MiB");
    cr_assert_geq(config.heap_bytes[0], (size_t)100 * 8192, "each possible frame keeps a slot");
    config.heap_bytes[0] = (size_t)8 << 20;
    ks_decode_fit_heaps(&config, 5000);
    cr_assert_eq(config.heap_bytes[0], (size_t)8 << 20, "5000 ops of 4 KiB frames could fill it");
}
