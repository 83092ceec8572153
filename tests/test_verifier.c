/*
 * test_verifier.c -- harness/verifier.c against the allocators of broken_allocators.h.
 *
 * Each fault class is provoked by an allocator with exactly that bug (or, for BAD_FREE and LEAK,
 * by misusing the correct reference allocator), and the test asserts the whole ks_fault: kind,
 * allocator name, instance, op index, address and the message's fixed prefix, plus the detail
 * that makes the message useful. Each also asserts that the fault does not cascade (the frames
 * involved can be freed without further faults). The negative controls -- the reference
 * allocator over a long mixed sequence, on one thread and on four, and broken allocators used
 * short of their bug -- must stay silent.
 */
#include <criterion/criterion.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "broken_allocators.h"
#include "heap.h"
#include "shadow.h"
#include "verifier.h"

/* ---- helpers -------------------------------------------------------------------------------- */

typedef struct fault_log {
    unsigned calls;
    ks_fault last;
} fault_log;

static void log_fault(void *arg, const ks_fault *fault)
{
    fault_log *log = arg;
    log->calls++;
    log->last = *fault;
}

static ks_verifier *open_session(fault_log *log, uint32_t self_check_every_ops, uint32_t max_faults_kept)
{
    ks_verifier_options options = {
        .self_check_every_ops = self_check_every_ops,
        .max_faults_kept = max_faults_kept,
        .on_fault = log != NULL ? log_fault : NULL,
        .on_fault_arg = log,
    };
    ks_verifier *verifier = NULL;
    ks_error err;
    ks_error_clear(&err);
    cr_assert_eq(ks_verifier_create(&options, &verifier, &err), STATUS_SUCCESS, "%s", err.message);
    return verifier;
}

static KSALLOCATOR_FRAMING framing_of(ULONG frames, ULONG frame_bytes, ULONG align_mask, ULONG flags)
{
    KSALLOCATOR_FRAMING framing;
    memset(&framing, 0, sizeof framing);
    framing.RequirementsFlags = flags;
    framing.PoolType = NonPagedPool;
    framing.Frames = frames;
    framing.FrameSize = frame_bytes;
    framing.FileAlignment = align_mask;
    return framing;
}

/* One verified instance: what the engine would keep per pin. */
typedef struct verified {
    KSPIN pin;
    ks_verifier_pin vpin;
    KSALLOCATOR_FRAMING framing; /* after InitializeAllocator: what the allocator settled on */
    void *context;
} verified;

static NTSTATUS try_open(ks_verifier *verifier, const ks_allocator_entry *entry, KSALLOCATOR_FRAMING framing,
                         ks_heap *heap, verified *out)
{
    memset(out, 0, sizeof *out);
    out->pin.abi_version = KSALLOC_ABI_VERSION;
    out->pin.name = "test-pin";
    out->pin.framing = framing;
    out->pin.heap = heap;
    out->vpin = (ks_verifier_pin){.verifier = verifier, .inner = entry, .pin = &out->pin};
    out->framing = framing;
    return ks_verifier_dispatch.InitializeAllocator(&out->vpin, &out->framing, &out->context);
}

static void open_verified(ks_verifier *verifier, const ks_allocator_entry *entry, KSALLOCATOR_FRAMING framing,
                          ks_heap *heap, verified *out)
{
    NTSTATUS status = try_open(verifier, entry, framing, heap, out);
    cr_assert_eq(status, STATUS_SUCCESS, "InitializeAllocator of %s: %s", entry->name, ks_status_name(status));
    cr_assert_not_null(out->context);
}

static void *v_allocate(verified *v)
{
    return ks_verifier_dispatch.Allocate(v->context);
}

static void v_free(verified *v, void *frame)
{
    ks_verifier_dispatch.Free(v->context, frame);
}

static void v_delete(verified *v)
{
    ks_verifier_dispatch.DeleteAllocator(v->context);
    v->context = NULL;
}

/* Asserts the index-th fault field by field and its message's fixed prefix. */
static const ks_fault *expect_fault(const ks_verifier *verifier, uint64_t index, ks_fault_kind kind,
                                    const char *allocator, unsigned instance, uint64_t op_index, uintptr_t address)
{
    const ks_fault *fault = ks_verifier_fault_at(verifier, index);
    cr_assert_not_null(fault, "no fault %" PRIu64 " (count %" PRIu64 ")", index, ks_verifier_fault_count(verifier));
    cr_assert_eq(fault->kind, kind, "fault %" PRIu64 " is %s, expected %s: %s", index, ks_fault_kind_name(fault->kind),
                 ks_fault_kind_name(kind), fault->message);
    cr_assert_str_eq(fault->allocator, allocator, "%s", fault->message);
    cr_assert_eq(fault->instance, instance, "%s", fault->message);
    cr_assert_eq(fault->op_index, op_index, "op %" PRIu64 " expected %" PRIu64 ": %s", fault->op_index, op_index,
                 fault->message);
    cr_assert_eq(fault->address, address, "address 0x%" PRIxPTR " expected 0x%" PRIxPTR ": %s", fault->address, address,
                 fault->message);
    char prefix[256];
    snprintf(prefix, sizeof prefix, "%s: allocator '%s' instance %u op %" PRIu64 " frame 0x%" PRIxPTR ": ",
             ks_fault_kind_name(kind), allocator, instance, op_index, address);
    cr_assert(strncmp(fault->message, prefix, strlen(prefix)) == 0, "message '%s' does not start with '%s'",
              fault->message, prefix);
    cr_assert_null(strchr(fault->message, '\n'), "the message is one line: %s", fault->message);
    return fault;
}

static void expect_message_has(const ks_fault *fault, const char *phrase)
{
    cr_assert_not_null(strstr(fault->message, phrase), "expected '%s' in: %s", phrase, fault->message);
}

static void expect_fault_count(const ks_verifier *verifier, uint64_t count)
{
    const ks_fault *first = ks_verifier_fault_at(verifier, 0);
    cr_assert_eq(ks_verifier_fault_count(verifier), count, "%" PRIu64 " faults, expected %" PRIu64 "; first: %s",
                 ks_verifier_fault_count(verifier), count, first ? first->message : "(none)");
}

static uint64_t test_rng(uint64_t *state)
{
    uint64_t z = (*state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* ---- negative controls ---------------------------------------------------------------------- */

#define MIXED_MAX_LIVE 96u

typedef struct mixed_pin {
    verified v;
    void *frames[MIXED_MAX_LIVE];
    uint32_t live;
} mixed_pin;

/* One random op on pin; returns 1 when it is counted by the verifier. */
static int mixed_step(mixed_pin *pin, uint64_t *rng)
{
    uint64_t dice = test_rng(rng) % 100;
    if (pin->live == 0 || (dice < 45 && pin->live < MIXED_MAX_LIVE)) {
        void *frame = v_allocate(&pin->v);
        ULONG frames_max = pin->v.framing.Frames;
        if (frames_max != 0 && pin->live == frames_max) {
            cr_assert_null(frame, "a bounded allocator served frame %u of %u", pin->live + 1, frames_max);
            return 1;
        }
        cr_assert_not_null(frame, "the reference allocator failed with %u live", pin->live);
        cr_assert_eq((uintptr_t)frame & pin->v.framing.FileAlignment, 0);
        pin->frames[pin->live++] = frame;
    } else if (dice < 75) {
        uint32_t k = (uint32_t)(test_rng(rng) % pin->live);
        v_free(&pin->v, pin->frames[k]);
        pin->frames[k] = pin->frames[--pin->live];
    } else {
        ks_verifier_touch(pin->v.context, pin->frames[test_rng(rng) % pin->live]);
    }
    return 1;
}

Test(verifier, reference_allocator_stays_silent_over_a_long_mixed_sequence)
{
    fault_log log = {0};
    ks_verifier *verifier = open_session(&log, 97, 0);
    ks_test_reference_calls before;
    ks_test_reference_calls_get(&before);
    static mixed_pin pins[3];
    /* Bounded and promised; unbounded with an odd size; FrameSize left to the allocator. */
    open_verified(verifier, &ks_test_reference_entry,
                  framing_of(64, 100, FILE_64_BYTE_ALIGNMENT, KSALLOCATOR_REQUIREMENTF_MUST_ALLOCATE), NULL, &pins[0].v);
    open_verified(verifier, &ks_test_reference_entry, framing_of(0, 13, FILE_BYTE_ALIGNMENT, 0), NULL, &pins[1].v);
    open_verified(verifier, &ks_test_reference_entry, framing_of(8, 0, FILE_QUAD_ALIGNMENT, 0), NULL, &pins[2].v);
    cr_assert_eq(pins[2].v.framing.FrameSize, KS_TEST_REFERENCE_DEFAULT_FRAME_BYTES, "write-back not passed on");
    cr_assert_eq(ks_verifier_framing(pins[2].v.context)->FrameSize, KS_TEST_REFERENCE_DEFAULT_FRAME_BYTES);
    uint64_t rng = 2024, ops = 0;
    for (int step = 0; step < 30000; step++)
        ops += (uint64_t)mixed_step(&pins[test_rng(&rng) % 3], &rng);
    expect_fault_count(verifier, 0);
    cr_assert_eq(ks_verifier_op_count(verifier), ops);
    for (int p = 0; p < 3; p++) {
        cr_assert_eq(ks_verifier_live(pins[p].v.context), pins[p].live);
        while (pins[p].live > 0)
            v_free(&pins[p].v, pins[p].frames[--pins[p].live]);
        ks_verifier_self_check(pins[p].v.context);
        v_delete(&pins[p].v);
    }
    expect_fault_count(verifier, 0);
    cr_assert_eq(log.calls, 0);
    ks_test_reference_calls after;
    ks_test_reference_calls_get(&after);
    cr_assert_eq(after.frames_live, before.frames_live);
    cr_assert_eq(after.allocate - before.allocate, after.free_frame - before.free_frame);
    ks_verifier_destroy(verifier);
}

Test(verifier, broken_allocators_short_of_their_bug_stay_silent)
{
    ks_verifier *verifier = open_session(NULL, 1, 0);
    const ks_allocator_entry *entries[] = {&ks_broken_null_promised_entry, &ks_broken_over_capacity_entry,
                                           &ks_broken_double_handout_entry, &ks_broken_corruption_entry};
    for (size_t e = 0; e < sizeof entries / sizeof entries[0]; e++) {
        verified v;
        open_verified(verifier, entries[e], framing_of(8, 64, FILE_OCTA_ALIGNMENT, 0), NULL, &v);
        void *frame = v_allocate(&v); /* one frame: under every bound, no neighbour to corrupt */
        cr_assert_not_null(frame, "%s", entries[e]->name);
        ks_verifier_touch(v.context, frame);
        v_free(&v, frame);
        v_delete(&v);
    }
    expect_fault_count(verifier, 0);
    ks_verifier_destroy(verifier);
}

/* ---- NULL_PROMISED -------------------------------------------------------------------------- */

Test(verifier, null_with_capacity_promised_is_caught)
{
    fault_log log = {0};
    ks_verifier *verifier = open_session(&log, 0, 0);
    verified v;
    open_verified(verifier, &ks_broken_null_promised_entry, framing_of(8, 64, FILE_OCTA_ALIGNMENT, 0), NULL, &v);
    void *frames[4];
    for (int i = 0; i < 4; i++)
        cr_assert_not_null(frames[i] = v_allocate(&v));
    expect_fault_count(verifier, 0);
    cr_assert_null(v_allocate(&v));
    const ks_fault *fault = expect_fault(verifier, 0, KS_FAULT_NULL_PROMISED, "broken_null_promised", 0, 4, 0);
    expect_message_has(fault, "4 of 8 frames live");
    expect_message_has(fault, "KS_CAP_GUARANTEED");
    cr_assert_eq(log.calls, 1);
    cr_assert_eq(log.last.kind, KS_FAULT_NULL_PROMISED);
    for (int i = 0; i < 4; i++)
        v_free(&v, frames[i]);
    v_delete(&v);
    expect_fault_count(verifier, 1);
    ks_verifier_destroy(verifier);
}

Test(verifier, null_is_a_fault_only_when_capacity_is_promised)
{
    ks_verifier *verifier = open_session(NULL, 0, 0);
    ks_allocator_entry unpromised = ks_broken_null_promised_entry;
    unpromised.caps &= ~KS_CAP_GUARANTEED;
    verified quiet, strict;
    open_verified(verifier, &unpromised, framing_of(4, 64, 0, 0), NULL, &quiet);
    open_verified(verifier, &unpromised, framing_of(4, 64, 0, KSALLOCATOR_REQUIREMENTF_MUST_ALLOCATE), NULL, &strict);
    void *a = v_allocate(&quiet), *b = v_allocate(&quiet);
    cr_assert_null(v_allocate(&quiet)); /* op 2: allowed, nothing was promised */
    expect_fault_count(verifier, 0);
    void *c = v_allocate(&strict), *d = v_allocate(&strict);
    cr_assert_null(v_allocate(&strict)); /* op 5 */
    const ks_fault *fault = expect_fault(verifier, 0, KS_FAULT_NULL_PROMISED, "broken_null_promised", 1, 5, 0);
    expect_message_has(fault, "MUST_ALLOCATE");
    v_free(&quiet, a);
    v_free(&quiet, b);
    v_free(&strict, c);
    v_free(&strict, d);
    v_delete(&quiet);
    v_delete(&strict);
    expect_fault_count(verifier, 1);
    ks_verifier_destroy(verifier);
}

/* ---- OVER_CAPACITY -------------------------------------------------------------------------- */

Test(verifier, frame_beyond_frames_on_a_bounded_allocator_is_caught)
{
    ks_verifier *verifier = open_session(NULL, 0, 0);
    verified v;
    open_verified(verifier, &ks_broken_over_capacity_entry, framing_of(4, 64, FILE_OCTA_ALIGNMENT, 0), NULL, &v);
    void *frames[5];
    for (int i = 0; i < 4; i++)
        frames[i] = v_allocate(&v);
    expect_fault_count(verifier, 0);
    frames[4] = v_allocate(&v);
    cr_assert_not_null(frames[4]);
    const ks_fault *fault =
        expect_fault(verifier, 0, KS_FAULT_OVER_CAPACITY, "broken_over_capacity", 0, 4, (uintptr_t)frames[4]);
    expect_message_has(fault, "frame 5 handed out with 4 live");
    cr_assert_eq(ks_verifier_live(v.context), 5, "an over-capacity frame is still tracked");
    for (int i = 0; i < 5; i++)
        v_free(&v, frames[i]);
    v_delete(&v);
    expect_fault_count(verifier, 1);
    ks_verifier_destroy(verifier);
}

Test(verifier, over_capacity_needs_the_bounded_claim)
{
    ks_verifier *verifier = open_session(NULL, 0, 0);
    ks_allocator_entry unbounded = ks_broken_over_capacity_entry;
    unbounded.caps &= ~KS_CAP_BOUNDED;
    verified v;
    open_verified(verifier, &unbounded, framing_of(4, 64, 0, 0), NULL, &v);
    void *frames[5];
    for (int i = 0; i < 5; i++)
        cr_assert_not_null(frames[i] = v_allocate(&v));
    for (int i = 0; i < 5; i++)
        v_free(&v, frames[i]);
    v_delete(&v);
    expect_fault_count(verifier, 0);
    ks_verifier_destroy(verifier);
}

/* ---- MISALIGNED ----------------------------------------------------------------------------- */

Test(verifier, misaligned_frame_is_caught)
{
    ks_verifier *verifier = open_session(NULL, 0, 0);
    verified v;
    open_verified(verifier, &ks_broken_misaligned_entry, framing_of(4, 100, FILE_64_BYTE_ALIGNMENT, 0), NULL, &v);
    void *first = v_allocate(&v), *second = v_allocate(&v);
    cr_assert_eq((uintptr_t)first % 64, 0);
    cr_assert_eq((uintptr_t)second - (uintptr_t)first, 104);
    const ks_fault *fault =
        expect_fault(verifier, 0, KS_FAULT_MISALIGNED, "broken_misaligned", 0, 1, (uintptr_t)second);
    expect_message_has(fault, "not aligned to 64 bytes (FileAlignment 0x3f): address mod 64 = 40");
    cr_assert_eq(ks_verifier_live(v.context), 2, "a misaligned frame is still tracked");
    ks_verifier_touch(v.context, second);
    v_free(&v, second);
    v_free(&v, first);
    v_delete(&v);
    expect_fault_count(verifier, 1);
    ks_verifier_destroy(verifier);
}

/* ---- DOUBLE_HANDOUT ------------------------------------------------------------------------- */

Test(verifier, frame_handed_out_twice_in_one_instance_is_caught)
{
    fault_log log = {0};
    ks_verifier *verifier = open_session(&log, 0, 0);
    verified v;
    open_verified(verifier, &ks_broken_double_handout_entry, framing_of(8, 64, FILE_OCTA_ALIGNMENT, 0), NULL, &v);
    uint8_t *a = v_allocate(&v), *b = v_allocate(&v); /* ops 0, 1 */
    cr_assert_eq(b, a + 64);
    v_free(&v, b); /* op 2 */
    v_free(&v, a); /* op 3: the descending order that trips the bug */
    void *x = v_allocate(&v), *y = v_allocate(&v); /* ops 4, 5 */
    cr_assert_eq(x, a);
    cr_assert_eq(y, a);
    const ks_fault *fault = expect_fault(verifier, 0, KS_FAULT_DOUBLE_HANDOUT, "broken_double_handout", 0, 5,
                                         (uintptr_t)a);
    expect_message_has(fault, "while live in instance 0 (allocator 'broken_double_handout') since op 4");
    cr_assert_eq(log.calls, 1);
    /* No cascade: the user's two Frees and a Touch of the shared frame are accepted. */
    ks_verifier_touch(v.context, y);
    v_free(&v, x);
    v_free(&v, y);
    cr_assert_eq(ks_verifier_live(v.context), 0);
    v_delete(&v);
    expect_fault_count(verifier, 1);
    ks_verifier_destroy(verifier);
}

Test(verifier, double_handout_needs_the_free_order_that_trips_the_bug)
{
    ks_verifier *verifier = open_session(NULL, 0, 0);
    verified v;
    open_verified(verifier, &ks_broken_double_handout_entry, framing_of(8, 64, FILE_OCTA_ALIGNMENT, 0), NULL, &v);
    void *a = v_allocate(&v), *b = v_allocate(&v);
    v_free(&v, a);
    v_free(&v, b);
    void *x = v_allocate(&v), *y = v_allocate(&v);
    cr_assert_neq(x, y);
    v_free(&v, x);
    v_free(&v, y);
    v_delete(&v);
    expect_fault_count(verifier, 0);
    ks_verifier_destroy(verifier);
}

Test(verifier, frame_live_in_another_instance_handed_out_again_is_caught)
{
    ks_verifier *verifier = open_session(NULL, 0, 0);
    verified first, second;
    open_verified(verifier, &ks_broken_static_frame_entry, framing_of(1, 256, FILE_OCTA_ALIGNMENT, 0), NULL, &first);
    open_verified(verifier, &ks_broken_static_frame_entry, framing_of(1, 256, FILE_OCTA_ALIGNMENT, 0), NULL, &second);
    void *frame0 = v_allocate(&first), *frame1 = v_allocate(&second); /* ops 0, 1 */
    cr_assert_eq(frame0, frame1);
    const ks_fault *fault =
        expect_fault(verifier, 0, KS_FAULT_DOUBLE_HANDOUT, "broken_static_frame", 1, 1, (uintptr_t)frame1);
    expect_message_has(fault, "while live in instance 0 (allocator 'broken_static_frame') since op 0");
    /* Each instance may give back what it handed out; the first frame's pattern was kept. */
    v_free(&second, frame1);
    v_free(&first, frame0);
    v_delete(&first);
    v_delete(&second);
    expect_fault_count(verifier, 1);
    ks_verifier_destroy(verifier);
}

/* ---- SHORT_FRAME ---------------------------------------------------------------------------- */

Test(verifier, frames_shorter_than_frame_size_are_caught)
{
    ks_verifier *verifier = open_session(NULL, 0, 0);
    verified v;
    open_verified(verifier, &ks_broken_short_frame_entry, framing_of(8, 64, FILE_OCTA_ALIGNMENT, 0), NULL, &v);
    uint8_t *frames[4];
    for (int i = 0; i < 4; i++)
        frames[i] = v_allocate(&v); /* 32 bytes apart */
    cr_assert_eq(frames[1], frames[0] + 32);
    const ks_fault *fault =
        expect_fault(verifier, 0, KS_FAULT_SHORT_FRAME, "broken_short_frame", 0, 1, (uintptr_t)frames[1]);
    expect_message_has(fault, "shares 32 bytes with live frame");
    expect_message_has(fault, "shorter than FrameSize 64");
    /* frames[2] starts where frames[0] ends; frames[3] overlaps frames[2]. */
    expect_fault(verifier, 1, KS_FAULT_SHORT_FRAME, "broken_short_frame", 0, 3, (uintptr_t)frames[3]);
    expect_fault_count(verifier, 2);
    /* The untracked frames got no pattern, so the tracked ones they overlap are intact. */
    for (int i = 0; i < 4; i++)
        v_free(&v, frames[i]);
    v_delete(&v);
    expect_fault_count(verifier, 2);
    ks_verifier_destroy(verifier);
}

/* ---- OVERLAP -------------------------------------------------------------------------------- */

Test(verifier, frames_of_two_instances_overlapping_on_a_shared_heap_are_caught)
{
    ks_heap *heap = NULL;
    ks_error err;
    cr_assert_eq(ks_heap_create("overlap-test", 1u << 16, &heap, &err), STATUS_SUCCESS, "%s", err.message);
    ks_verifier *verifier = open_session(NULL, 0, 0);
    verified low, high;
    /* Slices of 4 * 100 = 400 bytes; frames 112 bytes apart, so low's fourth frame is at 336. */
    open_verified(verifier, &ks_broken_overlap_entry, framing_of(4, 100, FILE_OCTA_ALIGNMENT, 0), heap, &low);
    open_verified(verifier, &ks_broken_overlap_entry, framing_of(4, 100, FILE_OCTA_ALIGNMENT, 0), heap, &high);
    uint8_t *base = heap->base;
    uint8_t *high_frame = v_allocate(&high); /* op 0 */
    cr_assert_eq(high_frame, base + 400);
    uint8_t *low_frames[4];
    for (int i = 0; i < 4; i++)
        low_frames[i] = v_allocate(&low); /* ops 1..4 */
    cr_assert_eq(low_frames[3], base + 336);
    const ks_fault *fault =
        expect_fault(verifier, 0, KS_FAULT_OVERLAP, "broken_overlap", 0, 4, (uintptr_t)low_frames[3]);
    char detail[160];
    snprintf(detail, sizeof detail, "shares 36 bytes with live frame 0x%" PRIxPTR " (+100) of instance 1",
             (uintptr_t)high_frame);
    expect_message_has(fault, detail);
    expect_fault_count(verifier, 1);
    ks_verifier_touch(high.context, high_frame); /* intact: the overlapping frame got no pattern */
    for (int i = 0; i < 4; i++)
        v_free(&low, low_frames[i]);
    v_free(&high, high_frame);
    v_delete(&low);
    v_delete(&high);
    expect_fault_count(verifier, 1);
    cr_assert_eq(ks_heap_destroy(heap, &err), STATUS_SUCCESS, "%s", err.message);
    ks_verifier_destroy(verifier);
}

/* ---- CORRUPTION ----------------------------------------------------------------------------- */

/* The offset a CORRUPTION message gives as the first difference. */
static size_t first_difference(const ks_fault *fault)
{
    const char *at = strstr(fault->message, "first difference at offset ");
    cr_assert_not_null(at, "%s", fault->message);
    size_t offset = SIZE_MAX;
    cr_assert_eq(sscanf(at, "first difference at offset %zu", &offset), 1, "%s", fault->message);
    return offset;
}

Test(verifier, allocator_writing_into_a_live_frame_is_caught_at_touch_and_at_free)
{
    ks_verifier *verifier = open_session(NULL, 0, 0);
    verified v;
    open_verified(verifier, &ks_broken_corruption_entry, framing_of(8, 64, FILE_OCTA_ALIGNMENT, 0), NULL, &v);
    void *a = v_allocate(&v), *b = v_allocate(&v); /* op 1 writes a link word into a */
    ks_verifier_touch(v.context, a);               /* op 2 */
    const ks_fault *fault = expect_fault(verifier, 0, KS_FAULT_CORRUPTION, "broken_corruption", 0, 2, (uintptr_t)a);
    /* The link is 8 bytes at offset 8; a byte of it may equal the pattern by chance. */
    size_t offset = first_difference(fault);
    cr_assert(offset >= 8 && offset < 16, "offset %zu: %s", offset, fault->message);
    expect_message_has(fault, "found at Touch");
    expect_message_has(fault, "of 64: expected 0x");
    expect_message_has(fault, "frame handed out at op 0, pattern generation 0");
    v_free(&v, a);                 /* op 3: Touch rewrote a, so it is clean again */
    expect_fault_count(verifier, 1);
    void *c = v_allocate(&v);      /* op 4 writes into b */
    v_free(&v, b);                 /* op 5 */
    fault = expect_fault(verifier, 1, KS_FAULT_CORRUPTION, "broken_corruption", 0, 5, (uintptr_t)b);
    expect_message_has(fault, "found at Free");
    v_free(&v, c);
    v_delete(&v);
    expect_fault_count(verifier, 2);
    ks_verifier_destroy(verifier);
}

Test(verifier, pattern_catches_a_stray_tail_byte_a_word_shift_and_a_copied_frame)
{
    ks_verifier *verifier = open_session(NULL, 0, 0);
    verified odd, big;
    open_verified(verifier, &ks_test_reference_entry, framing_of(0, 13, 0, 0), NULL, &odd);
    open_verified(verifier, &ks_test_reference_entry, framing_of(0, 4096, FILE_OCTA_ALIGNMENT, 0), NULL, &big);
    uint8_t *small = v_allocate(&odd); /* op 0 */
    small[12] ^= 0x01;
    ks_verifier_touch(odd.context, small); /* op 1 */
    const ks_fault *fault = expect_fault(verifier, 0, KS_FAULT_CORRUPTION, "test_reference", 0, 1, (uintptr_t)small);
    expect_message_has(fault, "first difference at offset 12 of 13");
    expect_message_has(fault, "1 byte(s) differ, the last at offset 12");

    uint8_t *page = v_allocate(&big); /* op 2 */
    memmove(page, page + 8, 4096 - 8);
    v_free(&big, page); /* op 3 */
    fault = expect_fault(verifier, 1, KS_FAULT_CORRUPTION, "test_reference", 1, 3, (uintptr_t)page);
    cr_assert_eq(first_difference(fault), 0, "%s", fault->message);

    uint8_t *x = v_allocate(&big), *y = v_allocate(&big); /* ops 4, 5 */
    memcpy(y, x, 4096); /* a valid pattern, but another frame's */
    ks_verifier_touch(big.context, y);                     /* op 6 */
    expect_fault(verifier, 2, KS_FAULT_CORRUPTION, "test_reference", 1, 6, (uintptr_t)y);

    uint8_t saved = x[100];
    x[100] = (uint8_t)~saved;
    x[100] = saved; /* changed and restored: what counts is the data at check time */
    ks_verifier_touch(big.context, x);
    v_free(&big, x);
    v_free(&big, y);
    v_free(&odd, small);
    v_delete(&odd);
    v_delete(&big);
    expect_fault_count(verifier, 3);
    ks_verifier_destroy(verifier);
}

/* ---- SELF_CHECK ----------------------------------------------------------------------------- */

Test(verifier, failing_self_check_is_reported_on_request_and_at_delete)
{
    ks_verifier *verifier = open_session(NULL, 0, 0);
    verified v;
    open_verified(verifier, &ks_broken_self_check_entry, framing_of(16, 64, FILE_OCTA_ALIGNMENT, 0), NULL, &v);
    void *frame = v_allocate(&v); /* frame 0 of the block */
    ks_verifier_self_check(v.context);
    expect_fault_count(verifier, 0);
    v_free(&v, frame); /* op 1: dropped by the bug */
    ks_verifier_self_check(v.context);
    cr_assert_eq(ks_verifier_op_count(verifier), 2, "a self-check is not an op");
    const ks_fault *fault = expect_fault(verifier, 0, KS_FAULT_SELF_CHECK, "broken_self_check", 0, 2, 0);
    expect_message_has(fault, "self_check on request returned STATUS_DATA_ERROR: 0 live + 0 free + 15 unused = 15 "
                              "frames, the block holds 16");
    v_delete(&v);
    fault = expect_fault(verifier, 1, KS_FAULT_SELF_CHECK, "broken_self_check", 0, 2, 0);
    expect_message_has(fault, "at DeleteAllocator");
    expect_fault_count(verifier, 2);
    ks_verifier_destroy(verifier);
}

Test(verifier, periodic_self_check_runs_every_n_ops_of_an_instance)
{
    ks_verifier *verifier = open_session(NULL, 3, 0);
    verified v;
    open_verified(verifier, &ks_broken_self_check_entry, framing_of(16, 64, FILE_OCTA_ALIGNMENT, 0), NULL, &v);
    void *frame0 = v_allocate(&v); /* op 0 */
    void *frame1 = v_allocate(&v); /* op 1 */
    v_free(&v, frame0);            /* op 2: the instance's 3rd op runs the check, after the drop */
    const ks_fault *fault = expect_fault(verifier, 0, KS_FAULT_SELF_CHECK, "broken_self_check", 0, 2, 0);
    expect_message_has(fault, "(periodic)");
    v_free(&v, frame1); /* op 3: no check due */
    expect_fault_count(verifier, 1);
    v_delete(&v);
    ks_verifier_destroy(verifier);
}

/* ---- INIT_FAILED ---------------------------------------------------------------------------- */

static const ks_fault *expect_init_fault(ks_verifier *verifier, const ks_allocator_entry *entry,
                                         KSALLOCATOR_FRAMING framing, const char *phrase, verified *v)
{
    uint64_t faults_before = ks_verifier_fault_count(verifier);
    open_verified(verifier, entry, framing, NULL, v);
    unsigned instance = (unsigned)faults_before; /* one instance per expected fault in these tests */
    const ks_fault *fault = expect_fault(verifier, faults_before, KS_FAULT_INIT_FAILED, entry->name, instance,
                                         ks_verifier_op_count(verifier), 0);
    expect_message_has(fault, phrase);
    return fault;
}

Test(verifier, weaker_framing_written_back_is_caught)
{
    ks_verifier *verifier = open_session(NULL, 0, 0);
    const ks_allocator_entry *entry = &ks_broken_init_weakened_entry;
    verified v[3];
    expect_init_fault(verifier, entry, framing_of(8, 8192, FILE_OCTA_ALIGNMENT, 0),
                      "wrote back FrameSize 4096, below the 8192 requested", &v[0]);
    cr_assert_eq(v[0].framing.FrameSize, 4096, "the caller sees the settled framing");
    cr_assert_eq(ks_verifier_framing(v[0].context)->FrameSize, 4096);
    expect_init_fault(verifier, entry, framing_of(8, 64, FILE_256_BYTE_ALIGNMENT, 0),
                      "wrote back FileAlignment 0xf, weaker than the 0xff requested", &v[1]);
    expect_init_fault(verifier, entry, framing_of(32, 64, 0, KSALLOCATOR_REQUIREMENTF_MUST_ALLOCATE),
                      "wrote back Frames 16, below the 32 requested with capacity promised (MUST_ALLOCATE)", &v[2]);
    /* The instances still work, checked against what they settled on. */
    for (int i = 0; i < 3; i++) {
        void *frame = v_allocate(&v[i]);
        cr_assert_not_null(frame);
        v_free(&v[i], frame);
        v_delete(&v[i]);
    }
    expect_fault_count(verifier, 3);
    ks_verifier_destroy(verifier);
}

Test(verifier, fewer_frames_without_a_promise_is_not_a_fault)
{
    ks_verifier *verifier = open_session(NULL, 0, 0);
    verified v;
    open_verified(verifier, &ks_broken_init_weakened_entry, framing_of(32, 64, 0, 0), NULL, &v);
    cr_assert_eq(v.framing.Frames, KS_TEST_WEAKENED_MAX_FRAMES);
    v_delete(&v);
    expect_fault_count(verifier, 0);
    ks_verifier_destroy(verifier);
}

Test(verifier, success_with_a_null_context_is_caught)
{
    ks_verifier *verifier = open_session(NULL, 0, 0);
    verified good, bad;
    open_verified(verifier, &ks_broken_init_null_context_entry, framing_of(8, 64, 0, 0), NULL, &good);
    expect_fault_count(verifier, 0);
    /* The fault is reported and the pin stops: no context, so no Allocate can reach the
     * allocator with NULL (it would crash a real one). */
    cr_assert_eq(try_open(verifier, &ks_broken_init_null_context_entry, framing_of(0, 64, 0, 0), NULL, &bad),
                 STATUS_INVALID_HANDLE);
    cr_assert_null(bad.context);
    const ks_fault *fault =
        expect_fault(verifier, 0, KS_FAULT_INIT_FAILED, "broken_init_null_context", 1, 0, 0);
    expect_message_has(fault, "returned STATUS_SUCCESS with *Context left NULL");
    v_delete(&good);
    expect_fault_count(verifier, 1);
    ks_verifier_destroy(verifier);
}

/* An allocator whose frames are an unmapped page, then a read-only page. */
static void *garbage_page;
static NTSTATUS garbage_init(PVOID pin, PKSALLOCATOR_FRAMING framing, PVOID *context)
{
    (void)pin;
    (void)framing;
    *context = &garbage_page;
    return STATUS_SUCCESS;
}
static void garbage_delete(PVOID context) { (void)context; }
static PVOID garbage_allocate(PVOID context) { (void)context; return garbage_page; }
static void garbage_free(PVOID context, PVOID frame) { (void)context; (void)frame; }
static const KSALLOCATOR_DISPATCH garbage_dispatch = {garbage_init, garbage_delete, garbage_allocate, garbage_free};
static const ks_allocator_entry garbage_entry = {.abi_version = KSALLOC_ABI_VERSION,
                                                 .struct_bytes = sizeof(ks_allocator_entry),
                                                 .name = "garbage",
                                                 .dispatch = &garbage_dispatch};

/* With probe_frames, a frame that cannot be written is a fault and never returned, so the
 * verifier's pattern fill never faults the process; without, the test would die here. */
Test(verifier, an_unwritable_frame_is_a_fault_not_a_crash)
{
    ks_verifier_options options = {.probe_frames = true};
    ks_verifier *verifier = NULL;
    ks_error err;
    ks_error_clear(&err);
    cr_assert_eq(ks_verifier_create(&options, &verifier, &err), STATUS_SUCCESS, "%s", err.message);
    long page_bytes = sysconf(_SC_PAGESIZE);
    void *pages = mmap(NULL, 2 * (size_t)page_bytes, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    cr_assert_neq(pages, MAP_FAILED);
    cr_assert_eq(munmap((char *)pages + page_bytes, (size_t)page_bytes), 0);
    verified v;
    open_verified(verifier, &garbage_entry, framing_of(1, 64, 0, 0), NULL, &v);
    garbage_page = (char *)pages + page_bytes; /* unmapped */
    cr_assert_null(v_allocate(&v));
    const ks_fault *fault =
        expect_fault(verifier, 0, KS_FAULT_UNWRITABLE_FRAME, "garbage", 0, 0, (uintptr_t)garbage_page);
    expect_message_has(fault, "cannot be written (Bad address)");
    garbage_page = pages; /* mapped, read-only */
    cr_assert_null(v_allocate(&v));
    expect_fault(verifier, 1, KS_FAULT_UNWRITABLE_FRAME, "garbage", 0, 1, (uintptr_t)garbage_page);
    v_delete(&v);
    munmap(pages, (size_t)page_bytes);
    ks_verifier_destroy(verifier);
}

Test(verifier, refused_framing_is_passed_through_without_a_fault)
{
    ks_verifier *verifier = open_session(NULL, 0, 0);
    verified v;
    KSALLOCATOR_FRAMING bad_mask = framing_of(8, 64, 5, 0); /* 5 is not 2^k - 1 */
    cr_assert_eq(try_open(verifier, &ks_test_reference_entry, bad_mask, NULL, &v), STATUS_INVALID_PARAMETER);
    cr_assert_null(v.context);
    cr_assert_eq(ks_verifier_dispatch.InitializeAllocator(NULL, &bad_mask, &v.context), STATUS_INVALID_PARAMETER);
    expect_fault_count(verifier, 0);
    /* A refused instance takes no number: the next one is instance 0. */
    open_verified(verifier, &ks_test_reference_entry, framing_of(8, 64, 0, 0), NULL, &v);
    ks_verifier_dispatch.Free(v.context, NULL); /* op 0 */
    expect_fault(verifier, 0, KS_FAULT_BAD_FREE, "test_reference", 0, 0, 0);
    v_delete(&v);
    ks_verifier_destroy(verifier);
}

/* ---- BAD_FREE (the caller's fault) ---------------------------------------------------------- */

Test(verifier, bad_frees_are_caught_described_and_not_passed_down)
{
    ks_verifier *verifier = open_session(NULL, 0, 0);
    verified mine, other;
    open_verified(verifier, &ks_test_reference_entry, framing_of(8, 64, FILE_OCTA_ALIGNMENT, 0), NULL, &mine);
    open_verified(verifier, &ks_test_reference_entry, framing_of(8, 64, FILE_OCTA_ALIGNMENT, 0), NULL, &other);
    uint8_t *a = v_allocate(&mine), *b = v_allocate(&other); /* ops 0, 1 */
    static uint8_t never_allocated[64];
    ks_test_reference_calls before, after;
    ks_test_reference_calls_get(&before);

    v_free(&mine, never_allocated); /* op 2 */
    expect_message_has(
        expect_fault(verifier, 0, KS_FAULT_BAD_FREE, "test_reference", 0, 2, (uintptr_t)never_allocated),
        "Free of a frame not live in this instance: no longer live or never handed out by this instance");
    v_free(&mine, b); /* op 3 */
    expect_message_has(expect_fault(verifier, 1, KS_FAULT_BAD_FREE, "test_reference", 0, 3, (uintptr_t)b),
                       "it is live in instance 1 (allocator 'test_reference', handed out at op 1), not in this one");
    v_free(&mine, a + 8); /* op 4 */
    char detail[128];
    snprintf(detail, sizeof detail, "it points 8 bytes into live frame 0x%" PRIxPTR " of instance 0", (uintptr_t)a);
    expect_message_has(expect_fault(verifier, 2, KS_FAULT_BAD_FREE, "test_reference", 0, 4, (uintptr_t)(a + 8)),
                       detail);
    ks_test_reference_calls_get(&after);
    cr_assert_eq(after.free_frame, before.free_frame, "a refused Free reached the allocator");

    v_free(&mine, a); /* op 5: fine */
    v_free(&mine, a); /* op 6 */
    expect_message_has(expect_fault(verifier, 3, KS_FAULT_BAD_FREE, "test_reference", 0, 6, (uintptr_t)a),
                       "it was already freed at op 5 (double free)");
    v_free(&mine, NULL); /* op 7 */
    expect_message_has(expect_fault(verifier, 4, KS_FAULT_BAD_FREE, "test_reference", 0, 7, 0), ": NULL");
    ks_test_reference_calls_get(&after);
    cr_assert_eq(after.free_frame, before.free_frame + 1, "exactly the one good Free reaches the allocator");

    v_free(&other, b);
    v_delete(&mine);
    v_delete(&other);
    expect_fault_count(verifier, 5);
    ks_verifier_destroy(verifier);
}

Test(verifier, touch_of_a_frame_not_live_is_caught)
{
    ks_verifier *verifier = open_session(NULL, 0, 0);
    verified v;
    open_verified(verifier, &ks_test_reference_entry, framing_of(8, 64, 0, 0), NULL, &v);
    void *frame = v_allocate(&v); /* op 0 */
    v_free(&v, frame);            /* op 1 */
    ks_verifier_touch(v.context, frame); /* op 2 */
    const ks_fault *fault = expect_fault(verifier, 0, KS_FAULT_BAD_FREE, "test_reference", 0, 2, (uintptr_t)frame);
    expect_message_has(fault, "touch of a frame not live");
    expect_message_has(fault, "already freed at op 1");
    v_delete(&v);
    expect_fault_count(verifier, 1);
    ks_verifier_destroy(verifier);
}

/* ---- LEAK (the caller's fault) -------------------------------------------------------------- */

Test(verifier, frames_live_at_delete_are_reported_and_released)
{
    ks_verifier *verifier = open_session(NULL, 0, 0);
    ks_test_reference_calls before, after;
    ks_test_reference_calls_get(&before);
    verified v;
    open_verified(verifier, &ks_test_reference_entry, framing_of(8, 64, 0, 0), NULL, &v);
    void *frames[6];
    for (int i = 0; i < 6; i++)
        frames[i] = v_allocate(&v); /* ops 0..5 */
    v_delete(&v);
    const ks_fault *fault = expect_fault(verifier, 0, KS_FAULT_LEAK, "test_reference", 0, 6, (uintptr_t)frames[0]);
    char listed[256];
    snprintf(listed, sizeof listed,
             "6 frame(s) still live at DeleteAllocator: 0x%" PRIxPTR " (op 0), 0x%" PRIxPTR " (op 1), 0x%" PRIxPTR
             " (op 2), 0x%" PRIxPTR " (op 3), ...",
             (uintptr_t)frames[0], (uintptr_t)frames[1], (uintptr_t)frames[2], (uintptr_t)frames[3]);
    expect_message_has(fault, listed);
    ks_test_reference_calls_get(&after);
    cr_assert_eq(after.frames_live, before.frames_live, "the inner DeleteAllocator was not called");
    expect_fault_count(verifier, 1);
    ks_verifier_destroy(verifier);
}

Test(verifier, shadow_entries_of_a_deleted_instance_are_released)
{
    ks_verifier *verifier = open_session(NULL, 0, 0);
    verified first, second;
    open_verified(verifier, &ks_broken_static_frame_entry, framing_of(1, 64, 0, 0), NULL, &first);
    void *frame = v_allocate(&first);
    v_delete(&first); /* leaks the static frame */
    expect_fault(verifier, 0, KS_FAULT_LEAK, "broken_static_frame", 0, 1, (uintptr_t)frame);
    /* The same address from a new instance is not a double handout: the leak was released. */
    open_verified(verifier, &ks_broken_static_frame_entry, framing_of(1, 64, 0, 0), NULL, &second);
    cr_assert_eq(v_allocate(&second), frame);
    v_free(&second, frame);
    v_delete(&second);
    expect_fault_count(verifier, 1);
    ks_verifier_destroy(verifier);
}

/* ---- session bookkeeping -------------------------------------------------------------------- */

Test(verifier, faults_beyond_the_kept_limit_are_counted_and_still_reported)
{
    fault_log log = {0};
    ks_verifier *verifier = open_session(&log, 0, 2);
    verified v;
    open_verified(verifier, &ks_test_reference_entry, framing_of(8, 64, 0, 0), NULL, &v);
    for (int i = 0; i < 5; i++)
        v_free(&v, NULL); /* ops 0..4 */
    expect_fault_count(verifier, 5);
    expect_fault(verifier, 0, KS_FAULT_BAD_FREE, "test_reference", 0, 0, 0);
    expect_fault(verifier, 1, KS_FAULT_BAD_FREE, "test_reference", 0, 1, 0);
    cr_assert_null(ks_verifier_fault_at(verifier, 2));
    cr_assert_eq(log.calls, 5);
    cr_assert_eq(log.last.op_index, 4);
    v_delete(&v);
    ks_verifier_destroy(verifier);
}

Test(verifier, allocate_free_and_touch_are_ops_and_nothing_else_is)
{
    ks_verifier *verifier = open_session(NULL, 0, 0);
    verified v;
    open_verified(verifier, &ks_test_reference_entry, framing_of(8, 64, 0, 0), NULL, &v);
    cr_assert_eq(ks_verifier_op_count(verifier), 0);
    void *frame = v_allocate(&v);
    ks_verifier_touch(v.context, frame);
    cr_assert_eq(ks_verifier_live(v.context), 1);
    v_free(&v, frame);
    ks_verifier_self_check(v.context);
    cr_assert_eq(ks_verifier_live(v.context), 0);
    v_delete(&v);
    cr_assert_eq(ks_verifier_op_count(verifier), 3);
    expect_fault_count(verifier, 0);
    ks_verifier_destroy(verifier);
}

Test(verifier, fault_kind_names_are_stable_and_distinct)
{
    const char *expected[KS_FAULT_KIND_COUNT] = {"none",           "init-failed", "null-promised", "over-capacity",
                                                 "misaligned",     "double-handout", "short-frame", "overlap",
                                                 "corruption",     "bad-free",    "leak",          "self-check",
                                                 "unwritable-frame"};
    for (int kind = 0; kind < KS_FAULT_KIND_COUNT; kind++)
        cr_assert_str_eq(ks_fault_kind_name((ks_fault_kind)kind), expected[kind]);
    cr_assert_str_eq(ks_fault_kind_name(KS_FAULT_KIND_COUNT), "unknown");
}

Test(verifier, reset_refuses_while_an_instance_is_open_and_changes_nothing)
{
    ks_verifier *verifier = open_session(NULL, 0, 0);
    verified v;
    open_verified(verifier, &ks_test_reference_entry, framing_of(8, 64, FILE_OCTA_ALIGNMENT, 0), NULL, &v);
    void *a = v_allocate(&v); /* op 0 */
    ks_error err;
    ks_error_clear(&err);
    cr_assert_eq(ks_verifier_reset(verifier, &err), STATUS_DEVICE_BUSY);
    cr_assert_not_null(strstr(err.message, "1 instance(s) still open and 1 frame(s) tracked"), "%s", err.message);
    /* The session goes on as before: the frame is still tracked, the op count kept. */
    cr_assert_eq(ks_verifier_op_count(verifier), 1);
    cr_assert_eq(ks_verifier_live(v.context), 1);
    v_free(&v, a);
    v_free(&v, a); /* op 2: still known as freed at op 1 */
    expect_message_has(expect_fault(verifier, 0, KS_FAULT_BAD_FREE, "test_reference", 0, 2, (uintptr_t)a),
                       "it was already freed at op 1 (double free)");
    v_delete(&v);
    cr_assert_eq(ks_verifier_reset(verifier, &err), STATUS_SUCCESS, "%s", err.message);
    ks_verifier_destroy(verifier);
}

Test(verifier, a_reset_session_numbers_and_judges_as_a_new_one)
{
    fault_log log = {0};
    ks_verifier *verifier = open_session(&log, 0, 0);
    ks_error err;
    ks_error_clear(&err);
    /* Session 1: two instances, a double free, one frame live at delete (a leak). */
    verified first, second;
    open_verified(verifier, &ks_test_reference_entry, framing_of(8, 64, FILE_OCTA_ALIGNMENT, 0), NULL, &first);
    open_verified(verifier, &ks_test_reference_entry, framing_of(8, 64, FILE_OCTA_ALIGNMENT, 0), NULL, &second);
    uint8_t *a = v_allocate(&first);
    v_allocate(&second);
    v_free(&first, a);
    v_free(&first, a);
    v_delete(&second);
    v_delete(&first); /* deleted last: its record is the next one reused */
    expect_fault_count(verifier, 2);
    cr_assert_eq(ks_verifier_reset(verifier, &err), STATUS_SUCCESS, "%s", err.message);

    /* Session 2: nothing of session 1 shows. */
    expect_fault_count(verifier, 0);
    cr_assert_null(ks_verifier_fault_at(verifier, 0));
    cr_assert_eq(ks_verifier_op_count(verifier), 0);
    cr_assert_eq(ks_verifier_internal_failures(verifier, NULL), 0);
    /* The instance records are reused, emptied: the frame freed twice in session 1 is not
     * remembered as freed, and numbering starts again from instance 0, op 0. */
    verified again;
    open_verified(verifier, &ks_test_reference_entry, framing_of(8, 64, FILE_OCTA_ALIGNMENT, 0), NULL, &again);
    v_free(&again, a); /* op 0: not a double free in this session (nothing dereferences a) */
    expect_message_has(expect_fault(verifier, 0, KS_FAULT_BAD_FREE, "test_reference", 0, 0, (uintptr_t)a),
                       "no longer live or never handed out by this instance");
    uint8_t *b = v_allocate(&again); /* op 1 */
    v_free(&again, b);                /* op 2 */
    v_free(&again, b);                /* op 3 */
    expect_message_has(expect_fault(verifier, 1, KS_FAULT_BAD_FREE, "test_reference", 0, 3, (uintptr_t)b),
                       "it was already freed at op 2 (double free)");
    /* Detection works as in a new session: a double hand-out is still caught. */
    verified broken;
    open_verified(verifier, &ks_broken_double_handout_entry, framing_of(8, 64, FILE_OCTA_ALIGNMENT, 0), NULL,
                  &broken);
    uint8_t *x = v_allocate(&broken), *y = v_allocate(&broken); /* ops 4, 5 */
    v_free(&broken, y);                                            /* op 6 */
    v_free(&broken, x);                                            /* op 7 */
    void *p = v_allocate(&broken), *q = v_allocate(&broken);     /* ops 8, 9 */
    cr_assert_eq(p, q);
    expect_fault(verifier, 2, KS_FAULT_DOUBLE_HANDOUT, "broken_double_handout", 1, 9, (uintptr_t)x);
    v_free(&broken, p);
    v_free(&broken, q);
    v_delete(&broken);
    v_delete(&again);
    expect_fault_count(verifier, 3);
    cr_assert_eq(log.calls, 5, "2 faults in session 1, 3 in session 2");
    ks_verifier_destroy(verifier);
}

Test(verifier, shadow_pool_exhaustion_gives_the_frame_back_and_is_not_a_fault)
{
    ks_verifier *verifier = open_session(NULL, 0, 0);
    verified v;
    open_verified(verifier, &ks_test_reference_entry,
                  framing_of(4, 64, 0, KSALLOCATOR_REQUIREMENTF_MUST_ALLOCATE), NULL, &v);
    ks_test_reference_calls before, after;
    ks_test_reference_calls_get(&before);
    ks_shadow_inject_growth_failure(0);
    cr_assert_null(v_allocate(&v), "a frame the verifier cannot track must not reach the caller");
    ks_test_reference_calls_get(&after);
    cr_assert_eq(after.allocate, before.allocate + 1);
    cr_assert_eq(after.free_frame, before.free_frame + 1, "the frame went back to the allocator");
    cr_assert_eq(ks_verifier_live(v.context), 0);
    expect_fault_count(verifier, 0); /* not NULL_PROMISED: the allocator did serve */
    ks_error internal;
    cr_assert_eq(ks_verifier_internal_failures(verifier, &internal), 1);
    cr_assert_eq(internal.status, STATUS_INSUFFICIENT_RESOURCES);
    cr_assert_not_null(strstr(internal.message, "shadow node pool could not grow"), "%s", internal.message);
    ks_shadow_inject_growth_failure(SIZE_MAX);
    void *frame = v_allocate(&v);
    cr_assert_not_null(frame);
    v_free(&v, frame);
    v_delete(&v);
    expect_fault_count(verifier, 0);
    ks_verifier_destroy(verifier);
}

/* ---- threads -------------------------------------------------------------------------------- */

#define THREAD_OPS 20000
#define THREAD_MAX_LIVE 48u

typedef struct thread_job {
    verified *v;
    uint64_t seed;
    uint64_t ops;
    void *frames[THREAD_MAX_LIVE];
    uint32_t live;
} thread_job;

static void *thread_main(void *arg)
{
    thread_job *job = arg;
    uint64_t rng = job->seed;
    for (int step = 0; step < THREAD_OPS; step++, job->ops++) {
        uint64_t dice = test_rng(&rng) % 100;
        if (job->live == 0 || (dice < 45 && job->live < THREAD_MAX_LIVE)) {
            void *frame = v_allocate(job->v);
            if (frame != NULL)
                job->frames[job->live++] = frame;
        } else if (dice < 75) {
            uint32_t k = (uint32_t)(test_rng(&rng) % job->live);
            v_free(job->v, job->frames[k]);
            job->frames[k] = job->frames[--job->live];
        } else {
            ks_verifier_touch(job->v->context, job->frames[test_rng(&rng) % job->live]);
        }
    }
    while (job->live > 0) {
        v_free(job->v, job->frames[--job->live]);
        job->ops++;
    }
    return NULL;
}

Test(verifier, threads_sharing_a_session_and_an_instance_stay_silent)
{
    ks_verifier *verifier = open_session(NULL, 1000, 0);
    verified shared, own;
    open_verified(verifier, &ks_test_reference_entry, framing_of(0, 200, FILE_32_BYTE_ALIGNMENT, 0), NULL, &shared);
    open_verified(verifier, &ks_test_reference_entry, framing_of(64, 24, 0, 0), NULL, &own);
    /* Three threads on one thread-safe instance, one on its own: all in one shadow map. */
    static thread_job jobs[4];
    pthread_t threads[4];
    for (int t = 0; t < 4; t++) {
        jobs[t] = (thread_job){.v = t < 3 ? &shared : &own, .seed = 1000 + (uint64_t)t};
        cr_assert_eq(pthread_create(&threads[t], NULL, thread_main, &jobs[t]), 0);
    }
    uint64_t ops = 0;
    for (int t = 0; t < 4; t++) {
        pthread_join(threads[t], NULL);
        ops += jobs[t].ops;
    }
    expect_fault_count(verifier, 0);
    cr_assert_eq(ks_verifier_op_count(verifier), ops);
    cr_assert_eq(ks_verifier_live(shared.context), 0);
    cr_assert_eq(ks_verifier_live(own.context), 0);
    v_delete(&shared);
    v_delete(&own);
    expect_fault_count(verifier, 0);
    ks_verifier_destroy(verifier);
}

/* Two threads at the capacity edge of a guaranteed allocator: a NULL there is legitimate whenever
 * the other thread's frames fill the pool, including frames the allocator has handed out but the
 * shadow map does not show yet, and frames the map no longer shows but the allocator has not got
 * back yet. The verifier must not call any of those a broken promise. */
#define EDGE_ROUNDS 20000

static void *edge_thread_main(void *arg)
{
    verified *v = arg;
    void *held[3];
    for (int round = 0; round < EDGE_ROUNDS; round++) {
        unsigned count = 0;
        while (count < 3 && (held[count] = v_allocate(v)) != NULL)
            count++;
        while (count > 0)
            v_free(v, held[--count]);
    }
    return NULL;
}

Test(verifier, threads_at_the_capacity_edge_of_a_guaranteed_allocator_stay_silent)
{
    ks_verifier *verifier = open_session(NULL, 0, 0);
    verified shared;
    open_verified(verifier, &ks_test_reference_entry, framing_of(4, 64, FILE_QUAD_ALIGNMENT, 0), NULL, &shared);
    cr_assert(ks_test_reference_entry.caps & KS_CAP_GUARANTEED, "the control needs a capacity promise");
    pthread_t threads[2];
    for (int t = 0; t < 2; t++)
        cr_assert_eq(pthread_create(&threads[t], NULL, edge_thread_main, &shared), 0);
    for (int t = 0; t < 2; t++)
        pthread_join(threads[t], NULL);
    expect_fault_count(verifier, 0);
    v_delete(&shared);
    ks_verifier_destroy(verifier);
}

/* ---- frames running into memory ASan knows is not the frame's (ASan builds only) ------------- */
/* The verifier's pattern loops are not instrumented (verifier.c, patterns); one range check per
 * frame must still let ASan stop a frame that runs past its heap block, on the fill at Allocate
 * and on the check at Free. The allocator below hands out heap blocks half as long as FrameSize. */
#if defined(__SANITIZE_ADDRESS__)
#define TEST_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define TEST_ASAN 1
#endif
#endif

#ifdef TEST_ASAN
#include <fcntl.h>
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#include <stdlib.h>
#include <unistd.h>

#define ASAN_DIED_EXIT_CODE 77

static void exit_on_asan_report(void)
{
    _exit(ASAN_DIED_EXIT_CODE); /* whatever ASAN_OPTIONS say about aborting */
}

/* The report these tests expect goes to /dev/null: tests/run-suite fails a run whose output has
 * any sanitizer report in it. The exit code says ASan stopped the run. */
static void expect_asan_report(void)
{
    static int null_fd = -1;
    if (null_fd < 0)
        null_fd = open("/dev/null", O_WRONLY);
    cr_assert_geq(null_fd, 0);
    __sanitizer_set_report_fd((void *)(intptr_t)null_fd);
    __asan_set_death_callback(exit_on_asan_report);
}

typedef struct half_heap {
    ULONG frame_bytes;
} half_heap;

static NTSTATUS half_heap_initialize(PVOID initial_context, PKSALLOCATOR_FRAMING framing, PVOID *context)
{
    (void)initial_context;
    half_heap *heap = malloc(sizeof *heap);
    if (heap == NULL)
        return STATUS_INSUFFICIENT_RESOURCES;
    heap->frame_bytes = framing->FrameSize;
    *context = heap;
    return STATUS_SUCCESS;
}

static void half_heap_delete(PVOID context)
{
    free(context);
}

static PVOID half_heap_allocate(PVOID context)
{
    const half_heap *heap = context;
    return malloc(heap->frame_bytes / 2); /* the bug: short heap blocks */
}

static void half_heap_free(PVOID context, PVOID frame)
{
    (void)context;
    free(frame);
}

static const KSALLOCATOR_DISPATCH half_heap_dispatch = {half_heap_initialize, half_heap_delete, half_heap_allocate,
                                                        half_heap_free};
static const ks_allocator_entry half_heap_entry = {
    .abi_version = KSALLOC_ABI_VERSION,
    .struct_bytes = sizeof(ks_allocator_entry),
    .name = "half_heap",
    .description = "heap blocks half as long as FrameSize",
    .dispatch = &half_heap_dispatch,
};

Test(verifier_asan, a_frame_past_its_heap_block_is_stopped_by_asan_at_allocate, .exit_code = ASAN_DIED_EXIT_CODE)
{
    expect_asan_report();
    ks_verifier *verifier = open_session(NULL, 0, 0);
    verified v;
    open_verified(verifier, &half_heap_entry, framing_of(4, 256, 0, 0), NULL, &v);
    v_allocate(&v); /* the fill writes past the 128-byte block */
    cr_assert_fail("the fill of a frame running past its heap block was not stopped");
}

Test(verifier_asan, a_frame_freed_behind_the_verifier_is_stopped_by_asan_at_free, .exit_code = ASAN_DIED_EXIT_CODE)
{
    expect_asan_report();
    ks_verifier *verifier = open_session(NULL, 0, 0);
    verified v;
    open_verified(verifier, &ks_test_reference_entry, framing_of(4, 256, 0, 0), NULL, &v);
    unsigned char *frame = v_allocate(&v);
    cr_assert_not_null(frame);
    ASAN_POISON_MEMORY_REGION(frame + 100, 8); /* as if the heap had taken these bytes back */
    v_free(&v, frame); /* the check reads them */
    cr_assert_fail("the check of a frame with poisoned bytes was not stopped");
}
#endif
