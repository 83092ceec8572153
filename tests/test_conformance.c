/*
 * test_conformance.c -- one conformance suite, run against every allocator in the catalogue and
 * the example plugin (tests/plugin/example_plugin.c). Each test is a Criterion parameterized
 * test over "subjects": index i < ks_catalogue_count() is the i-th built-in, the last index is
 * the plugin, so an allocator added to the catalogue is covered without touching this file, and
 * every assertion message starts with the allocator's name and the framing it was given.
 *
 * What it holds every subject to (the contract in ksalloc.h):
 *  - a battery of framings within the entry's stated limits is accepted; what InitializeAllocator
 *    writes back only strengthens the request; FrameSize/Frames 0 are accepted and the documented
 *    defaults of the built-ins are checked exactly;
 *  - frames are aligned, writable over the whole FrameSize, distinct and non-overlapping;
 *  - capacity promised (KS_CAP_GUARANTEED or MUST_ALLOCATE) means Frames frames; KS_CAP_BOUNDED
 *    means NULL at Frames + 1 and service again after a Free; Free then Allocate works forever;
 *  - an alignment mask that is not 2^k - 1 is STATUS_INVALID_PARAMETER; a FrameSize or an
 *    alignment over the stated limit is an error status, not a crash;
 *  - DeleteAllocator with frames live releases them (the asan build's LeakSanitizer is the
 *    judge: a leak fails the test process);
 *  - self_check passes after a long mixed sequence; counters are well formed and agree with the
 *    test's own count of live frames;
 *  - KS_CAP_SHARED_HEAP: two pins on one heap get non-overlapping frames and leave the heap
 *    detached; KS_CAP_THREAD_SAFE: two threads on one instance neither share a frame nor
 *    exceed the bound;
 *  - an entry's bare hook (ks_bare_ops, the library as its users call it): frames aligned,
 *    writable, disjoint, and freed from another thread as readily as from their own;
 *  - the same through ks_verifier_dispatch, with zero faults, and a leak at DeleteAllocator
 *    reported as exactly that.
 *  - KS_CAP_DMA: every pin gets the adapter of an emulated device (SUBJECT_DMA_OPTIONS), the
 *    whole battery runs on it, and the device's DMA-debug checker must stay silent through it
 *    and its teardown; every frame is reachable by the device: its segments (the adapter's frame
 *    registry) lie within the mask, cross no boundary, respect the maximum segment length,
 *    alignment and count, and cover the frame, on several strict device descriptions.
 * Allocator-specific behaviour (pool's stride and LIFO order, lookaside's hit/miss accounting,
 * system being glibc's heap, jemalloc's arenas, each self_check catching a broken state) follows
 * in suites named after the allocator; `peers` holds the four general-purpose peers to their
 * thread-safe instances: two threads trading frames on one instance, then DeleteAllocator
 * releasing what neither freed, as each library's own figures show.
 */
#include <criterion/criterion.h>
#include <criterion/parameterized.h>
#include <fcntl.h>
#include <gperftools/malloc_extension_c.h>
#include <jemalloc/jemalloc.h>
#include <malloc.h>
#include <mimalloc.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "../allocators/jemalloc_idle.h"
#include "catalogue.h"
#include "dma/dma.h"
#include "framing_request.h"
#include "heap.h"
#include "verifier.h"

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define SANITIZER_HEAP 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer) || __has_feature(memory_sanitizer)
#define SANITIZER_HEAP 1
#endif
#endif
#ifndef SANITIZER_HEAP
#define SANITIZER_HEAP 0
#endif
#if defined(__SANITIZE_ADDRESS__)
#define LEAK_CHECK 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define LEAK_CHECK 1
#endif
#endif
#ifndef LEAK_CHECK
#define LEAK_CHECK 0
#endif
#if LEAK_CHECK
/* From compiler-rt's <sanitizer/lsan_interface.h>: runs a leak check now, prints a report and
 * returns non-zero if it finds one, and lets the process go on. */
int __lsan_do_recoverable_leak_check(void);
#endif

#if SANITIZER_HEAP
/* From compiler-rt's <sanitizer/allocator_interface.h>, which gcc does not install: non-zero when
 * p is the start of a block the sanitizer's allocator handed out; the bytes its heap has handed
 * out and not yet had back. */
int __sanitizer_get_ownership(const volatile void *p);
size_t __sanitizer_get_current_allocated_bytes(void);
#endif

#define EXAMPLE_PLUGIN_PATH KS_BUILD_DIR "/lib/plugins/example_plugin.so"
#define MAX_TEST_FRAMES 64u     /* frames the battery holds live at once */
#define UNBOUNDED_TEST_FRAMES 8u /* frames taken from an allocator with Frames == 0 */

/* ---- Subjects: the built-ins, then the example plugin ---------------------------------------- */

typedef struct subject_param {
    unsigned index;
} subject_param;

typedef struct subject {
    const ks_allocator_entry *entry;
    ks_plugin *plugin; /* non-NULL for the example plugin */
    const char *name;
    ks_dma_device *dma_device; /* for KS_CAP_DMA entries: the device every pin is attached to */
} subject;

/* The device of a KS_CAP_DMA subject: a 32-bit scatter/gather bus master. */
#define SUBJECT_DMA_OPTIONS "mask=32,sg=1"

static ks_dma_device *dma_device_open(const char *spec)
{
    ks_dma_options options;
    ks_dma_options_init(&options);
    ks_error err;
    ks_error_clear(&err);
    cr_assert_eq(ks_dma_options_parse(&options, spec, &err), STATUS_SUCCESS, "%s: %s", spec, err.message);
    ks_dma_device *device = NULL;
    cr_assert_eq(ks_dma_device_create(&options, &device, &err), STATUS_SUCCESS, "%s: %s", spec, err.message);
    return device;
}

/* Stops the device (its leak checks run) and fails the test on any DMA-debug report. */
static void dma_device_close(ks_dma_device *device, const char *label)
{
    if (device == NULL)
        return;
    ks_dma_device_stop(device);
    ks_dma_adapter *adapter = ks_dma_device_adapter(device);
    uint64_t reports = ks_dma_report_count(adapter);
    ks_dma_report first;
    bool kept = reports > 0 && ks_dma_report_at(adapter, 0, &first);
    char message[640];
    snprintf(message, sizeof message, "%s: %s", kept ? ks_dma_rule_name(first.rule) : "-", kept ? first.message : "-");
    ks_dma_device_destroy(device);
    cr_assert_eq(reports, 0, "%s: %llu DMA-debug report(s); first: %s", label, (unsigned long long)reports, message);
}

static ks_dma_adapter *subject_adapter(const struct subject *subj)
{
    return subj->dma_device ? ks_dma_device_adapter(subj->dma_device) : NULL;
}

static void free_subject_params(struct criterion_test_params *params)
{
    cr_free(params->params);
}

/* Parameters live in Criterion's shared arena (cr_malloc) so that test workers see them. */
static struct criterion_test_params all_subjects(void)
{
    size_t count = ks_catalogue_count() + 1;
    subject_param *params = cr_malloc(count * sizeof *params);
    for (size_t index = 0; index < count; index++)
        params[index].index = (unsigned)index;
    return cr_make_param_array(subject_param, params, count, free_subject_params);
}

#define CONFORMANCE_TEST(test_name)                                                                                    \
    ParameterizedTestParameters(conformance, test_name)                                                                \
    {                                                                                                                  \
        return all_subjects();                                                                                         \
    }                                                                                                                  \
    ParameterizedTest(subject_param *param, conformance, test_name)

static void subject_open(const subject_param *param, subject *subj)
{
    memset(subj, 0, sizeof *subj);
    if (param->index < ks_catalogue_count()) {
        subj->entry = ks_catalogue_at(param->index);
    } else {
        ks_error err;
        ks_error_clear(&err);
        NTSTATUS status = ks_plugin_load(EXAMPLE_PLUGIN_PATH, &subj->plugin, &err);
        cr_assert_eq(status, STATUS_SUCCESS, "example plugin: %s", err.message);
        subj->entry = ks_plugin_entry(subj->plugin);
    }
    cr_assert_not_null(subj->entry, "subject %u has no entry", param->index);
    subj->name = subj->entry->name;
    if ((subj->entry->caps & KS_CAP_DMA) != 0)
        subj->dma_device = dma_device_open(SUBJECT_DMA_OPTIONS);
}

static void subject_close(subject *subj)
{
    ks_dma_device *device = subj->dma_device;
    subj->dma_device = NULL;
    dma_device_close(device, subj->name);
    ks_plugin_unload(subj->plugin);
    subj->plugin = NULL;
}

static bool has_cap(const subject *subj, ULONG cap)
{
    return (subj->entry->caps & cap) != 0;
}

/* Skips the test for a subject without the capability (the name is copied first: a plugin's
 * strings go with it when it is unloaded). */
static void skip_unless(subject *subj, ULONG cap, const char *cap_name)
{
    if (has_cap(subj, cap))
        return;
    char name[64];
    snprintf(name, sizeof name, "%s", subj->name);
    subject_close(subj);
    cr_skip_test("%s does not claim %s", name, cap_name);
}

static bool framing_within_limits(const ks_allocator_entry *entry, size_t frame_bytes, size_t align_bytes)
{
    return (entry->max_frame_bytes == 0 || frame_bytes <= entry->max_frame_bytes) &&
           (entry->max_align_bytes == 0 || align_bytes <= entry->max_align_bytes);
}

/* ---- Instances -------------------------------------------------------------------------------- */

typedef struct instance {
    const subject *subj;
    KSPIN pin;
    KSALLOCATOR_FRAMING requested;
    KSALLOCATOR_FRAMING framing; /* as the allocator settled it */
    void *context;
    char label[224]; /* "pool [Frames=16 FrameSize=100 align=64 must]": starts every message */
} instance;

static const char *const pin_names[] = {"pin0", "pin1", "pin2", "pin3"};

static NTSTATUS instance_open(instance *inst, const subject *subj, const KSALLOCATOR_FRAMING *requested,
                              ks_heap *heap, unsigned pin_id)
{
    memset(inst, 0, sizeof *inst);
    inst->subj = subj;
    inst->pin.abi_version = KSALLOC_ABI_VERSION;
    inst->pin.id = pin_id;
    inst->pin.name = pin_names[pin_id % (sizeof pin_names / sizeof pin_names[0])];
    inst->pin.framing = *requested;
    inst->pin.heap = heap;
    inst->pin.dma_adapter = subject_adapter(subj);
    inst->requested = *requested;
    inst->framing = *requested;
    snprintf(inst->label, sizeof inst->label, "%s [%s Frames=%u FrameSize=%u align=%zu%s%s]", subj->name,
             inst->pin.name, (unsigned)requested->Frames, (unsigned)requested->FrameSize,
             ks_framing_align_bytes(requested),
             (requested->RequirementsFlags & KSALLOCATOR_REQUIREMENTF_MUST_ALLOCATE) ? " must" : "",
             heap ? " shared-heap" : "");
    return subj->entry->dispatch->InitializeAllocator(&inst->pin, &inst->framing, &inst->context);
}

static void instance_open_ok(instance *inst, const subject *subj, const KSALLOCATOR_FRAMING *requested,
                             ks_heap *heap, unsigned pin_id)
{
    NTSTATUS status = instance_open(inst, subj, requested, heap, pin_id);
    cr_assert_eq(status, STATUS_SUCCESS, "%s: InitializeAllocator returned %s", inst->label, ks_status_name(status));
    cr_assert_not_null(inst->context, "%s: InitializeAllocator succeeded with *Context NULL", inst->label);
}

static void *instance_allocate(instance *inst)
{
    return inst->subj->entry->dispatch->Allocate(inst->context);
}

static void instance_free(instance *inst, void *frame)
{
    inst->subj->entry->dispatch->Free(inst->context, frame);
}

static void instance_delete(instance *inst)
{
    inst->subj->entry->dispatch->DeleteAllocator(inst->context);
    inst->context = NULL;
}

static bool instance_promised(const instance *inst)
{
    return inst->framing.Frames != 0 &&
           ((inst->requested.RequirementsFlags & KSALLOCATOR_REQUIREMENTF_MUST_ALLOCATE) ||
            has_cap(inst->subj, KS_CAP_GUARANTEED));
}

static bool instance_bounded(const instance *inst)
{
    return inst->framing.Frames != 0 && has_cap(inst->subj, KS_CAP_BOUNDED);
}

/* Frames the tests take: all of a bounded pool (up to MAX_TEST_FRAMES), a few of an unbounded one. */
static size_t instance_test_frames(const instance *inst)
{
    if (inst->framing.Frames == 0)
        return UNBOUNDED_TEST_FRAMES;
    return inst->framing.Frames < MAX_TEST_FRAMES ? inst->framing.Frames : MAX_TEST_FRAMES;
}

/* The write-back may only strengthen the request. */
static void check_settled_framing(const instance *inst)
{
    const KSALLOCATOR_FRAMING *req = &inst->requested, *got = &inst->framing;
    cr_assert(got->FrameSize != 0, "%s: FrameSize left 0; the allocator must write back the size it serves",
              inst->label);
    cr_assert(req->FrameSize == 0 || got->FrameSize >= req->FrameSize, "%s: FrameSize written back %u < requested",
              inst->label, (unsigned)got->FrameSize);
    cr_assert(ks_framing_align_valid(got), "%s: FileAlignment written back 0x%x is not 2^k-1", inst->label,
              (unsigned)got->FileAlignment);
    cr_assert(got->FileAlignment >= req->FileAlignment, "%s: FileAlignment written back 0x%x is weaker", inst->label,
              (unsigned)got->FileAlignment);
    cr_assert(!instance_promised(inst) || req->Frames == 0 || got->Frames >= req->Frames,
              "%s: Frames written back %u below the promised %u", inst->label, (unsigned)got->Frames,
              (unsigned)req->Frames);
}

static void check_self(const instance *inst, const char *when)
{
    if (inst->subj->entry->self_check == NULL)
        return;
    char why[512] = "";
    NTSTATUS status = inst->subj->entry->self_check(inst->context, why, sizeof why);
    cr_assert_eq(status, STATUS_SUCCESS, "%s: self_check %s failed (%s): %s", inst->label, when, ks_status_name(status),
                 why);
}

/* ---- Frame checks ----------------------------------------------------------------------------- */

static unsigned char fill_byte(size_t frame_index)
{
    return (unsigned char)(0x5A + frame_index * 37u); /* 37 is odd: 256 frames get 256 bytes */
}

/* Offset of the first byte of region that is not `byte`, or length when there is none. */
static size_t first_mismatch(const unsigned char *region, size_t length, unsigned char byte)
{
    unsigned char chunk[4096];
    memset(chunk, byte, sizeof chunk);
    for (size_t offset = 0; offset < length; offset += sizeof chunk) {
        size_t span = length - offset < sizeof chunk ? length - offset : sizeof chunk;
        if (memcmp(region + offset, chunk, span) == 0)
            continue;
        for (size_t index = 0; index < span; index++)
            if (region[offset + index] != byte)
                return offset + index;
    }
    return length;
}

static int compare_addresses(const void *left, const void *right)
{
    uintptr_t a = *(const uintptr_t *)left, b = *(const uintptr_t *)right;
    return (a > b) - (a < b);
}

/* No two of count frames of frame_bytes overlap (sorted, each ends before the next starts). */
static void check_disjoint(const char *label, void *const *frames, size_t count, size_t frame_bytes)
{
    uintptr_t *sorted = malloc(count * sizeof *sorted + 1);
    cr_assert_not_null(sorted);
    for (size_t index = 0; index < count; index++)
        sorted[index] = (uintptr_t)frames[index];
    qsort(sorted, count, sizeof *sorted, compare_addresses);
    for (size_t index = 1; index < count; index++) {
        uintptr_t previous = sorted[index - 1], current = sorted[index];
        if (previous + frame_bytes > current) {
            free(sorted);
            cr_assert_fail("%s: frames %p and %p overlap (%zu-byte frames %s)", label, (void *)previous,
                           (void *)current, frame_bytes, previous == current ? "handed out twice" : "too close");
        }
    }
    free(sorted);
}

/* Every frame non-NULL, aligned, writable over frame_bytes, distinct and not overlapping: each
 * gets its own fill byte, all are read back after all are written (an overlap shows as a
 * clobbered byte), then the addresses are checked pairwise through a sort. */
static void check_frames(const char *label, void *const *frames, size_t count, size_t frame_bytes,
                         size_t align_bytes)
{
    for (size_t index = 0; index < count; index++) {
        cr_assert_not_null(frames[index], "%s: frame %zu is NULL", label, index);
        cr_assert_eq((uintptr_t)frames[index] & (align_bytes - 1), 0, "%s: frame %zu at %p is not %zu-byte aligned",
                     label, index, frames[index], align_bytes);
        memset(frames[index], fill_byte(index), frame_bytes);
    }
    for (size_t index = 0; index < count; index++) {
        size_t offset = first_mismatch(frames[index], frame_bytes, fill_byte(index));
        cr_assert_eq(offset, frame_bytes, "%s: frame %zu at %p: byte %zu changed after other frames were written",
                     label, index, frames[index], offset);
    }
    check_disjoint(label, frames, count, frame_bytes);
}

/* Takes up to want frames; capacity promised means every one. Returns how many it got. */
static size_t take_frames(instance *inst, void **frames, size_t want)
{
    size_t served = 0;
    for (; served < want; served++) {
        frames[served] = instance_allocate(inst);
        if (frames[served] == NULL)
            break;
    }
    cr_assert(!instance_promised(inst) || served == want, "%s: Allocate returned NULL at frame %zu of %zu promised",
              inst->label, served, want);
    cr_assert(served > 0, "%s: Allocate served no frame at all", inst->label);
    return served;
}

/* Bounded: NULL at Frames + 1, and a frame again once one is freed. */
static void check_bound(instance *inst, void **frames, size_t served)
{
    if (!instance_bounded(inst) || served != inst->framing.Frames)
        return;
    void *extra = instance_allocate(inst);
    if (extra != NULL)
        instance_free(inst, extra);
    cr_assert_null(extra, "%s: bounded allocator handed out frame %u + 1 at %p", inst->label,
                   (unsigned)inst->framing.Frames, extra);
    size_t victim = served / 2;
    instance_free(inst, frames[victim]);
    frames[victim] = instance_allocate(inst);
    cr_assert_not_null(frames[victim], "%s: no frame after a Free at the bound", inst->label);
    cr_assert_eq((uintptr_t)frames[victim] & inst->framing.FileAlignment, 0, "%s: reused frame %p misaligned",
                 inst->label, frames[victim]);
}

static void free_frames(instance *inst, void **frames, size_t count)
{
    for (size_t index = 0; index < count; index++)
        instance_free(inst, frames[index]);
}

/* ---- Counters --------------------------------------------------------------------------------- */

#define MAX_COUNTERS 64u

static bool counter_name_valid(const char *name)
{
    if (name == NULL || name[0] == '\0')
        return false;
    for (const char *c = name; *c; c++)
        if (!((*c >= 'a' && *c <= 'z') || (*c >= '0' && *c <= '9') || *c == '_'))
            return false;
    return true;
}

/* Well formed (snake_case names, unique, the max respected) and, where the names say so, in
 * agreement with the test's count of live frames. */
static void check_counters(const instance *inst, size_t frames_live)
{
    if (inst->subj->entry->counters == NULL)
        return;
    ks_counter counters[MAX_COUNTERS + 1];
    memset(counters, 0, sizeof counters);
    counters[1].name = "canary";
    size_t one = inst->subj->entry->counters(inst->context, counters, 1);
    cr_assert(one <= 1 && strcmp(counters[1].name, "canary") == 0, "%s: counters wrote past max_counters = 1",
              inst->label);
    size_t count = inst->subj->entry->counters(inst->context, counters, MAX_COUNTERS);
    cr_assert(count <= MAX_COUNTERS, "%s: counters returned %zu > %u", inst->label, count, MAX_COUNTERS);
    for (size_t index = 0; index < count; index++) {
        cr_assert(counter_name_valid(counters[index].name), "%s: counter %zu has a bad name '%s'", inst->label, index,
                  counters[index].name ? counters[index].name : "(null)");
        for (size_t other = 0; other < index; other++)
            cr_assert(strcmp(counters[index].name, counters[other].name) != 0, "%s: counter '%s' appears twice",
                      inst->label, counters[index].name);
        if (strcmp(counters[index].name, "frames_live") == 0)
            cr_assert_eq(counters[index].value, frames_live, "%s: frames_live counter %llu, test holds %zu",
                         inst->label, (unsigned long long)counters[index].value, frames_live);
        if (strcmp(counters[index].name, "reserved_bytes") == 0)
            cr_assert(counters[index].value >= (uint64_t)frames_live * inst->framing.FrameSize,
                      "%s: reserved_bytes %llu < %zu live frames of %u bytes", inst->label,
                      (unsigned long long)counters[index].value, frames_live, (unsigned)inst->framing.FrameSize);
    }
}

static uint64_t counter_value(const instance *inst, const char *name)
{
    ks_counter counters[MAX_COUNTERS];
    cr_assert_not_null(inst->subj->entry->counters, "%s: no counters", inst->label);
    size_t count = inst->subj->entry->counters(inst->context, counters, MAX_COUNTERS);
    for (size_t index = 0; index < count; index++)
        if (strcmp(counters[index].name, name) == 0)
            return counters[index].value;
    cr_assert_fail("%s: no counter named '%s'", inst->label, name);
    return 0;
}

/* ---- A small deterministic PRNG (xorshift64*) ---------------------------------------------------- */

static uint64_t next_random(uint64_t *state)
{
    *state ^= *state >> 12;
    *state ^= *state << 25;
    *state ^= *state >> 27;
    return *state * UINT64_C(2685821657736338717);
}

/* ---- The framing battery ---------------------------------------------------------------------- */

static const ULONG battery_frame_bytes[] = {1, 64, 100, 4096, 65536, 1u << 20};
static const ULONG battery_align_masks[] = {0, 1, 3, 7, 15, 31, 63, 127, 255, 511, 1023, 2047, 4095};
static const ULONG battery_frames[] = {0, 1, 16, 64};
#define BATTERY_BYTES_PER_FRAMING ((size_t)16 << 20)

/* One framing end to end: accepted, settled sensibly, frames checked, the bound held, all freed,
 * self_check and counters consistent throughout. */
static void run_framing(const subject *subj, const KSALLOCATOR_FRAMING *requested)
{
    instance inst;
    instance_open_ok(&inst, subj, requested, NULL, 0);
    check_settled_framing(&inst);
    void *frames[MAX_TEST_FRAMES];
    size_t served = take_frames(&inst, frames, instance_test_frames(&inst));
    check_frames(inst.label, frames, served, inst.framing.FrameSize, ks_framing_align_bytes(&inst.framing));
    check_bound(&inst, frames, served);
    check_counters(&inst, served);
    check_self(&inst, "with frames live");
    free_frames(&inst, frames, served);
    check_counters(&inst, 0);
    check_self(&inst, "after freeing every frame");
    instance_delete(&inst);
}

CONFORMANCE_TEST(framing_battery)
{
    subject subj;
    subject_open(param, &subj);
    size_t framings = 0;
    for (size_t s = 0; s < sizeof battery_frame_bytes / sizeof battery_frame_bytes[0]; s++) {
        for (size_t a = 0; a < sizeof battery_align_masks / sizeof battery_align_masks[0]; a++) {
            ULONG frame_bytes = battery_frame_bytes[s], mask = battery_align_masks[a];
            if (!framing_within_limits(subj.entry, frame_bytes, (size_t)mask + 1))
                continue;
            /* Large frames: a few alignments only, and at most BATTERY_BYTES_PER_FRAMING of frames
             * per framing, to keep the suite fast under ASan (the cost is first-touch faults). */
            if (frame_bytes >= 65536 && mask != 0 && mask != 63 && mask != 4095)
                continue;
            for (size_t f = 0; f < sizeof battery_frames / sizeof battery_frames[0]; f++) {
                size_t frames_taken = battery_frames[f] ? battery_frames[f] : UNBOUNDED_TEST_FRAMES;
                if (frames_taken * frame_bytes > BATTERY_BYTES_PER_FRAMING)
                    continue;
                for (int must = 0; must < 2; must++) {
                    KSALLOCATOR_FRAMING framing = ks_test_framing(battery_frames[f], frame_bytes, mask, must);
                    run_framing(&subj, &framing);
                    framings++;
                }
            }
        }
    }
    cr_assert(framings >= 8 * 2, "%s: only %zu framings fit its stated limits", subj.name, framings);
    subject_close(&subj);
}

/* ---- Capacity --------------------------------------------------------------------------------- */

CONFORMANCE_TEST(promised_capacity_is_served)
{
    subject subj;
    subject_open(param, &subj);
    const ULONG frame_counts[] = {1, 16, 64};
    for (size_t index = 0; index < sizeof frame_counts / sizeof frame_counts[0]; index++) {
        KSALLOCATOR_FRAMING framing = ks_test_framing(frame_counts[index], 4096, 63, true);
        instance inst;
        instance_open_ok(&inst, &subj, &framing, NULL, 0);
        cr_assert(instance_promised(&inst), "%s: MUST_ALLOCATE with Frames=%u promises nothing?", inst.label,
                  (unsigned)frame_counts[index]);
        void *frames[MAX_TEST_FRAMES];
        size_t served = take_frames(&inst, frames, frame_counts[index]);
        cr_assert_eq(served, frame_counts[index], "%s: served %zu of %u", inst.label, served,
                     (unsigned)frame_counts[index]);
        free_frames(&inst, frames, served);
        instance_delete(&inst);
    }
    subject_close(&subj);
}

CONFORMANCE_TEST(bounded_refuses_past_frames_and_recovers)
{
    subject subj;
    subject_open(param, &subj);
    skip_unless(&subj, KS_CAP_BOUNDED, "KS_CAP_BOUNDED");
    const ULONG frame_counts[] = {1, 2, 16};
    for (size_t index = 0; index < sizeof frame_counts / sizeof frame_counts[0]; index++) {
        KSALLOCATOR_FRAMING framing = ks_test_framing(frame_counts[index], 256, 15, false);
        instance inst;
        instance_open_ok(&inst, &subj, &framing, NULL, 0);
        void *frames[MAX_TEST_FRAMES];
        size_t served = take_frames(&inst, frames, inst.framing.Frames);
        cr_assert_eq(served, inst.framing.Frames, "%s: a bounded allocator must reach its bound here", inst.label);
        /* Free the oldest, the newest and a middle one in turn; each time exactly one comes back. */
        size_t victims[] = {0, served - 1, served / 2};
        for (size_t round = 0; round < 3; round++) {
            cr_assert_null(instance_allocate(&inst), "%s: frame Frames + 1 handed out (round %zu)", inst.label, round);
            instance_free(&inst, frames[victims[round]]);
            frames[victims[round]] = instance_allocate(&inst);
            cr_assert_not_null(frames[victims[round]], "%s: no frame after a Free at the bound (round %zu)",
                               inst.label, round);
        }
        cr_assert_null(instance_allocate(&inst), "%s: frame Frames + 1 handed out after the rounds", inst.label);
        check_frames(inst.label, frames, served, inst.framing.FrameSize, ks_framing_align_bytes(&inst.framing));
        free_frames(&inst, frames, served);
        instance_delete(&inst);
    }
    subject_close(&subj);
}

CONFORMANCE_TEST(free_then_allocate_reuses)
{
    subject subj;
    subject_open(param, &subj);
    const ULONG frame_counts[] = {0, 4};
    for (size_t index = 0; index < sizeof frame_counts / sizeof frame_counts[0]; index++) {
        KSALLOCATOR_FRAMING framing = ks_test_framing(frame_counts[index], 512, 7, false);
        instance inst;
        instance_open_ok(&inst, &subj, &framing, NULL, 0);
        void *frames[MAX_TEST_FRAMES];
        size_t want = instance_test_frames(&inst);
        for (unsigned round = 0; round < 200; round++) {
            size_t served = take_frames(&inst, frames, want);
            cr_assert_eq(served, want, "%s: round %u served %zu of %zu after everything was freed", inst.label, round,
                         served, want);
            if (round % 50 == 0)
                check_frames(inst.label, frames, served, inst.framing.FrameSize, ks_framing_align_bytes(&inst.framing));
            free_frames(&inst, frames, served);
        }
        check_self(&inst, "after 200 fill/drain rounds");
        check_counters(&inst, 0);
        instance_delete(&inst);
    }
    subject_close(&subj);
}

/* ---- Defaults and refusals -------------------------------------------------------------------- */

/* What the built-ins and the example plugin document for FrameSize = 0 and Frames = 0. */
static const struct {
    const char *name;
    ULONG frame_bytes;
    ULONG frames;
} documented_defaults[] = {
    {"system", 4096, 0},    {"jemalloc", 4096, 0},  {"lookaside", 4096, 0},
    {"pool", 4096, 64},     {"example-bitmap", 4096, 64},
};

CONFORMANCE_TEST(zero_framing_accepted_and_written_back)
{
    subject subj;
    subject_open(param, &subj);
    KSALLOCATOR_FRAMING framing = ks_test_framing(0, 0, 0, false);
    instance inst;
    instance_open_ok(&inst, &subj, &framing, NULL, 0);
    check_settled_framing(&inst);
    for (size_t index = 0; index < sizeof documented_defaults / sizeof documented_defaults[0]; index++) {
        if (strcmp(documented_defaults[index].name, subj.name) != 0)
            continue;
        cr_assert_eq(inst.framing.FrameSize, documented_defaults[index].frame_bytes,
                     "%s: FrameSize 0 became %u, documented %u", inst.label, (unsigned)inst.framing.FrameSize,
                     (unsigned)documented_defaults[index].frame_bytes);
        cr_assert_eq(inst.framing.Frames, documented_defaults[index].frames, "%s: Frames 0 became %u, documented %u",
                     inst.label, (unsigned)inst.framing.Frames, (unsigned)documented_defaults[index].frames);
    }
    void *frames[MAX_TEST_FRAMES];
    size_t served = take_frames(&inst, frames, instance_test_frames(&inst));
    check_frames(inst.label, frames, served, inst.framing.FrameSize, ks_framing_align_bytes(&inst.framing));
    free_frames(&inst, frames, served);
    instance_delete(&inst);
    subject_close(&subj);
}

CONFORMANCE_TEST(invalid_alignment_mask_rejected)
{
    subject subj;
    subject_open(param, &subj);
    const ULONG bad_masks[] = {2, 5, 6, 0x0FFE, 0x1000, 0x1001, 0x80000000u, 0xFFFFFFFEu};
    for (size_t index = 0; index < sizeof bad_masks / sizeof bad_masks[0]; index++) {
        KSALLOCATOR_FRAMING framing = ks_test_framing(4, 4096, bad_masks[index], false);
        instance inst;
        NTSTATUS status = instance_open(&inst, &subj, &framing, NULL, 0);
        if (NT_SUCCESS(status))
            instance_delete(&inst);
        cr_assert_eq(status, STATUS_INVALID_PARAMETER, "%s: FileAlignment mask 0x%X gave %s, not STATUS_INVALID_PARAMETER",
                     subj.name, (unsigned)bad_masks[index], ks_status_name(status));
    }
    subject_close(&subj);
}

CONFORMANCE_TEST(over_the_limits_is_an_error_not_a_crash)
{
    subject subj;
    subject_open(param, &subj);
    const ks_allocator_entry *entry = subj.entry;
    size_t tried = 0;
    if (entry->max_frame_bytes != 0 && entry->max_frame_bytes < 0xFFFFFFFFu) {
        KSALLOCATOR_FRAMING framing = ks_test_framing(4, (ULONG)(entry->max_frame_bytes + 1), 0, false);
        instance inst;
        NTSTATUS status = instance_open(&inst, &subj, &framing, NULL, 0);
        if (NT_SUCCESS(status))
            instance_delete(&inst);
        cr_assert(!NT_SUCCESS(status), "%s: FrameSize max_frame_bytes + 1 = %zu accepted", subj.name,
                  entry->max_frame_bytes + 1);
        tried++;
    }
    if (entry->max_align_bytes != 0 && entry->max_align_bytes <= 0x80000000u) {
        KSALLOCATOR_FRAMING framing = ks_test_framing(4, 64, (ULONG)(entry->max_align_bytes * 2 - 1), false);
        instance inst;
        NTSTATUS status = instance_open(&inst, &subj, &framing, NULL, 0);
        if (NT_SUCCESS(status))
            instance_delete(&inst);
        cr_assert(!NT_SUCCESS(status), "%s: alignment 2 * max_align_bytes = %zu accepted", subj.name,
                  entry->max_align_bytes * 2);
        tried++;
    }
    /* The largest FrameSize the ABI can say: any answer but a crash. */
    KSALLOCATOR_FRAMING framing = ks_test_framing(1, 0xFFFFFFFFu, 0, false);
    instance inst;
    if (NT_SUCCESS(instance_open(&inst, &subj, &framing, NULL, 0))) {
        void *frame = instance_allocate(&inst);
        if (frame != NULL)
            instance_free(&inst, frame);
        instance_delete(&inst);
    }
    cr_assert(tried > 0 || (entry->max_frame_bytes == 0 && entry->max_align_bytes == 0), "%s: nothing tried",
              subj.name);
    subject_close(&subj);
}

/* ---- Lifetime, self-check, counters ----------------------------------------------------------- */

/* Out of line, and the frame array wiped, so that nothing on the caller's stack still points at
 * a frame when the leak check runs: LeakSanitizer counts a block anything points to as reachable. */
__attribute__((noinline)) static void delete_with_frames_live(const subject *subj)
{
    for (unsigned cycle = 0; cycle < 24; cycle++) {
        KSALLOCATOR_FRAMING framing = ks_test_framing(cycle % 2 ? 16 : 0, cycle % 3 ? 65536 : 100, 63, cycle % 4 == 0);
        instance inst;
        instance_open_ok(&inst, subj, &framing, NULL, 0);
        void *frames[MAX_TEST_FRAMES];
        size_t served = take_frames(&inst, frames, instance_test_frames(&inst));
        for (size_t index = 0; index < served; index += 2) /* free every other frame, keep the rest live */
            instance_free(&inst, frames[index]);
        instance_delete(&inst);
        explicit_bzero(frames, sizeof frames);
    }
}

CONFORMANCE_TEST(delete_with_frames_live_releases_them)
{
    subject subj;
    subject_open(param, &subj);
    delete_with_frames_live(&subj);
    char name[64];
    snprintf(name, sizeof name, "%s", subj.name);
    subject_close(&subj);
#if LEAK_CHECK
    /* Criterion ignores LeakSanitizer's exit status at the end of a test, so ask it here. Frames
     * of allocators whose memory LSan cannot see (jemalloc's arenas) are checked elsewhere. */
    cr_assert_eq(__lsan_do_recoverable_leak_check(), 0,
                 "%s: LeakSanitizer found memory still allocated after DeleteAllocator (report above)", name);
#endif
}

static void run_mixed_sequence(const subject *subj, const KSALLOCATOR_FRAMING *framing, uint64_t seed)
{
    instance inst;
    instance_open_ok(&inst, subj, framing, NULL, 0);
    void *frames[MAX_TEST_FRAMES];
    size_t live = 0, limit = instance_test_frames(&inst);
    uint64_t state = seed;
    for (unsigned op = 0; op < 4000; op++) {
        uint64_t roll = next_random(&state);
        if (live < limit && (live == 0 || roll % 100 < 55)) {
            void *frame = instance_allocate(&inst);
            cr_assert(frame != NULL || !instance_promised(&inst) || live >= inst.framing.Frames,
                      "%s: op %u: NULL with %zu of %u promised frames live", inst.label, op, live,
                      (unsigned)inst.framing.Frames);
            if (frame != NULL) {
                memset(frame, 0xC3, inst.framing.FrameSize);
                frames[live++] = frame;
            }
        } else if (live > 0) {
            size_t victim = (size_t)(roll >> 32) % live;
            instance_free(&inst, frames[victim]);
            frames[victim] = frames[--live];
        }
        if (op % 500 == 499) {
            char when[48];
            snprintf(when, sizeof when, "at op %u", op);
            check_self(&inst, when);
            check_counters(&inst, live);
        }
    }
    check_self(&inst, "after 4000 mixed ops");
    check_frames(inst.label, frames, live, inst.framing.FrameSize, ks_framing_align_bytes(&inst.framing));
    free_frames(&inst, frames, live);
    check_self(&inst, "after the final drain");
    instance_delete(&inst);
}

CONFORMANCE_TEST(self_check_and_counters_after_mixed_sequence)
{
    subject subj;
    subject_open(param, &subj);
    KSALLOCATOR_FRAMING bounded = ks_test_framing(16, 200, 31, false);
    KSALLOCATOR_FRAMING unbounded = ks_test_framing(0, 4096, 4095, false);
    KSALLOCATOR_FRAMING promised = ks_test_framing(32, 1000, 7, true);
    run_mixed_sequence(&subj, &bounded, 0x9E3779B97F4A7C15u);
    run_mixed_sequence(&subj, &unbounded, 0xD1B54A32D192ED03u);
    run_mixed_sequence(&subj, &promised, 0x8CB92BA72F3D8DD7u);
    subject_close(&subj);
}

/* ---- Shared heaps ----------------------------------------------------------------------------- */

CONFORMANCE_TEST(shared_heap_pins_get_disjoint_frames)
{
    subject subj;
    subject_open(param, &subj);
    skip_unless(&subj, KS_CAP_SHARED_HEAP, "KS_CAP_SHARED_HEAP");
    ks_heap *heap = NULL;
    ks_error err;
    ks_error_clear(&err);
    cr_assert_eq(ks_heap_create("conformance", 64u << 20, &heap, &err), STATUS_SUCCESS, "%s", err.message);
    /* Different frame sizes only where the allocator says it can serve them from one heap. */
    ULONG second_bytes = has_cap(&subj, KS_CAP_ANY_SIZE) ? 1000 : 4096;
    KSALLOCATOR_FRAMING first_framing = ks_test_framing(32, 4096, 63, false);
    KSALLOCATOR_FRAMING second_framing = ks_test_framing(32, second_bytes, 63, false);
    instance first, second;
    instance_open_ok(&first, &subj, &first_framing, heap, 0);
    instance_open_ok(&second, &subj, &second_framing, heap, 1);

    void *frames[2 * MAX_TEST_FRAMES];
    size_t count = 0;
    for (unsigned round = 0; round < 32; round++) { /* interleaved, as concurrent pins would */
        void *a = instance_allocate(&first), *b = instance_allocate(&second);
        cr_assert(a != NULL && b != NULL, "%s: round %u: NULL from a pin on a 64 MiB shared heap", subj.name, round);
        frames[count++] = a;
        frames[count++] = b;
    }
    for (size_t index = 0; index < count; index++) /* each frame, of its own pin's size */
        memset(frames[index], fill_byte(index), index % 2 ? second.framing.FrameSize : first.framing.FrameSize);
    for (size_t index = 0; index < count; index++) {
        size_t frame_bytes = index % 2 ? second.framing.FrameSize : first.framing.FrameSize;
        cr_assert_eq(first_mismatch(frames[index], frame_bytes, fill_byte(index)), frame_bytes,
                     "%s: frame %zu at %p was overwritten by the other pin", subj.name, index, frames[index]);
    }
    /* Two frame sizes, so each pair is checked at its own sizes rather than through one sort. */
    for (size_t i = 0; i < count; i++)
        for (size_t j = i + 1; j < count; j++) {
            uintptr_t a = (uintptr_t)frames[i], b = (uintptr_t)frames[j];
            size_t a_bytes = i % 2 ? second.framing.FrameSize : first.framing.FrameSize;
            size_t b_bytes = j % 2 ? second.framing.FrameSize : first.framing.FrameSize;
            cr_assert(a + a_bytes <= b || b + b_bytes <= a, "%s: frames %p and %p of two pins overlap", subj.name,
                      frames[i], frames[j]);
        }
    /* The first pin leaves with frames live; the second keeps working on the heap. */
    instance_delete(&first);
    for (size_t index = 1; index < count; index += 2)
        instance_free(&second, frames[index]);
    void *again = instance_allocate(&second);
    cr_assert_not_null(again, "%s: the second pin cannot allocate after the first left", subj.name);
    instance_free(&second, again);
    check_self(&second, "after the other pin left");
    instance_delete(&second);
    NTSTATUS status = ks_heap_destroy(heap, &err);
    cr_assert_eq(status, STATUS_SUCCESS, "%s: heap still attached after both pins were deleted: %s", subj.name,
                 err.message);
    subject_close(&subj);
}

/* ---- Threads ------------------------------------------------------------------------------------ *
 * A smoke test: two threads share one instance, each writes a token into both ends of every frame
 * it holds and checks it before the Free, and a shared count (never above the truth) is held to
 * the bound. On a loaded machine the threads may barely overlap, so a missing lock can slip
 * through here; the tsan build, which sees unordered accesses whether or not they collide, is
 * the judge of data races. */

#define THREAD_OPS 200000u
#define THREAD_HELD 12u

typedef struct thread_run {
    instance *inst;
    atomic_long *frames_live; /* never above the truth: raised after Allocate, lowered before Free */
    pthread_barrier_t *start; /* both threads start hammering at once */
    uint64_t seed;
    uint64_t token;
    char failure[256]; /* first failure, reported by the main thread */
} thread_run;

static void *thread_body(void *arg)
{
    thread_run *run = arg;
    instance *inst = run->inst;
    void *held[THREAD_HELD];
    uint64_t tokens[THREAD_HELD];
    size_t count = 0;
    uint64_t state = run->seed;
    size_t frame_bytes = inst->framing.FrameSize;
    pthread_barrier_wait(run->start);
    for (unsigned op = 0; op < THREAD_OPS && run->failure[0] == '\0'; op++) {
        uint64_t roll = next_random(&state);
        if (count < THREAD_HELD && (count == 0 || roll % 2)) {
            void *frame = instance_allocate(inst);
            if (frame == NULL)
                continue;
            long live = atomic_fetch_add(run->frames_live, 1) + 1;
            if (instance_bounded(inst) && live > (long)inst->framing.Frames)
                snprintf(run->failure, sizeof run->failure, "%ld frames live, bound %u", live,
                         (unsigned)inst->framing.Frames);
            tokens[count] = run->token ^ ((uint64_t)op << 16);
            memcpy(frame, &tokens[count], sizeof tokens[count]);
            memcpy((char *)frame + frame_bytes - sizeof tokens[count], &tokens[count], sizeof tokens[count]);
            held[count++] = frame;
        } else if (count > 0) {
            size_t victim = (size_t)(roll >> 33) % count;
            uint64_t head, tail;
            memcpy(&head, held[victim], sizeof head);
            memcpy(&tail, (char *)held[victim] + frame_bytes - sizeof tail, sizeof tail);
            if (head != tokens[victim] || tail != tokens[victim])
                snprintf(run->failure, sizeof run->failure, "frame %p was written by another thread", held[victim]);
            atomic_fetch_sub(run->frames_live, 1);
            instance_free(inst, held[victim]);
            held[victim] = held[--count];
            tokens[victim] = tokens[count];
        }
    }
    for (size_t index = 0; index < count; index++) {
        atomic_fetch_sub(run->frames_live, 1);
        instance_free(inst, held[index]);
    }
    return NULL;
}

CONFORMANCE_TEST(thread_safe_instances_survive_two_threads)
{
    subject subj;
    subject_open(param, &subj);
    skip_unless(&subj, KS_CAP_THREAD_SAFE, "KS_CAP_THREAD_SAFE");
    const ULONG frame_counts[] = {0, 16};
    for (size_t index = 0; index < sizeof frame_counts / sizeof frame_counts[0]; index++) {
        KSALLOCATOR_FRAMING framing = ks_test_framing(frame_counts[index], 256, 15, false);
        instance inst;
        instance_open_ok(&inst, &subj, &framing, NULL, 0);
        atomic_long frames_live;
        atomic_init(&frames_live, 0);
        pthread_barrier_t start;
        cr_assert_eq(pthread_barrier_init(&start, NULL, 2), 0);
        thread_run runs[2];
        pthread_t threads[2];
        for (unsigned t = 0; t < 2; t++) {
            runs[t] = (thread_run){.inst = &inst, .frames_live = &frames_live, .start = &start,
                                   .seed = 0x1234567u + t, .token = UINT64_C(0xA5A5000000000000) | ((uint64_t)t << 40)};
            cr_assert_eq(pthread_create(&threads[t], NULL, thread_body, &runs[t]), 0);
        }
        for (unsigned t = 0; t < 2; t++)
            pthread_join(threads[t], NULL);
        pthread_barrier_destroy(&start);
        for (unsigned t = 0; t < 2; t++)
            cr_assert_eq(runs[t].failure[0], '\0', "%s: thread %u: %s", inst.label, t, runs[t].failure);
        check_self(&inst, "after two threads");
        check_counters(&inst, 0);
        instance_delete(&inst);
    }
    subject_close(&subj);
}

/* ---- The bare hook ------------------------------------------------------------------------------ */

/* The entry's bare hook, read only when struct_bytes covers it (as the host does). */
static const ks_bare_ops *entry_bare(const ks_allocator_entry *entry)
{
    if (entry->struct_bytes < offsetof(ks_allocator_entry, bare) + sizeof entry->bare)
        return NULL;
    return entry->bare;
}

#define BARE_FRAMES 16u

typedef struct bare_batch {
    const ks_bare_ops *bare;
    void **frames;
    size_t count;
    size_t frame_bytes;
    size_t align_bytes;
} bare_batch;

static void *bare_free_batch(void *arg)
{
    bare_batch *batch = arg;
    for (size_t index = 0; index < batch->count; index++)
        batch->bare->free(batch->frames[index], batch->frame_bytes, batch->align_bytes);
    return NULL;
}

/* BARE_FRAMES frames of one size and alignment: checked as an instance's are, then half freed
 * here and half on another thread. */
static void bare_round(const subject *subj, const ks_bare_ops *bare, size_t frame_bytes, size_t align_bytes)
{
    char label[128];
    snprintf(label, sizeof label, "%s bare [FrameSize=%zu align=%zu]", subj->name, frame_bytes, align_bytes);
    void *frames[BARE_FRAMES];
    for (size_t index = 0; index < BARE_FRAMES; index++)
        cr_assert_not_null(frames[index] = bare->allocate(frame_bytes, align_bytes), "%s: allocate %zu: NULL", label,
                           index);
    check_frames(label, frames, BARE_FRAMES, frame_bytes, align_bytes);
    bare_batch here = {bare, frames, BARE_FRAMES / 2, frame_bytes, align_bytes};
    bare_batch there = {bare, frames + BARE_FRAMES / 2, BARE_FRAMES - BARE_FRAMES / 2, frame_bytes, align_bytes};
    pthread_t thread;
    cr_assert_eq(pthread_create(&thread, NULL, bare_free_batch, &there), 0);
    bare_free_batch(&here);
    cr_assert_eq(pthread_join(thread, NULL), 0);
}

CONFORMANCE_TEST(bare_frames_are_aligned_writable_and_disjoint)
{
    subject subj;
    subject_open(param, &subj);
    const ks_bare_ops *bare = entry_bare(subj.entry);
    if (bare == NULL) {
        char name[64];
        snprintf(name, sizeof name, "%s", subj.name);
        subject_close(&subj);
        cr_skip_test("%s has no bare hook (not a general-purpose library)", name);
    }
    cr_assert(bare->allocate != NULL && bare->free != NULL, "%s: a bare hook with a NULL function", subj.name);
    for (size_t s = 0; s < sizeof battery_frame_bytes / sizeof battery_frame_bytes[0]; s++)
        for (size_t a = 0; a < sizeof battery_align_masks / sizeof battery_align_masks[0]; a++)
            if (framing_within_limits(subj.entry, battery_frame_bytes[s], battery_align_masks[a] + 1u))
                bare_round(&subj, bare, battery_frame_bytes[s], battery_align_masks[a] + 1u);
    /* A frame exactly as large as its alignment, 256 to 1024 bytes: where mimalloc 2.0.9's
     * mi_malloc_aligned handed out unaligned blocks (microsoft/mimalloc#700). */
    for (size_t bytes = 256; bytes <= 1024; bytes *= 2)
        if (framing_within_limits(subj.entry, bytes, bytes))
            bare_round(&subj, bare, bytes, bytes);
    subject_close(&subj);
}

/* ---- Through the verifier ------------------------------------------------------------------- */

typedef struct verified {
    ks_verifier_pin vpin;
    KSPIN pin;
    KSALLOCATOR_FRAMING framing;
    void *context;
    char label[160];
} verified;

static ks_verifier *verifier_open(void)
{
    ks_verifier_options options;
    memset(&options, 0, sizeof options);
    options.self_check_every_ops = 37;
    ks_verifier *verifier = NULL;
    ks_error err;
    ks_error_clear(&err);
    cr_assert_eq(ks_verifier_create(&options, &verifier, &err), STATUS_SUCCESS, "%s", err.message);
    return verifier;
}

static void verified_open(verified *v, ks_verifier *verifier, const subject *subj, KSALLOCATOR_FRAMING framing,
                          ks_heap *heap, unsigned pin_id)
{
    memset(v, 0, sizeof *v);
    v->pin.abi_version = KSALLOC_ABI_VERSION;
    v->pin.id = pin_id;
    v->pin.name = pin_names[pin_id % (sizeof pin_names / sizeof pin_names[0])];
    v->pin.framing = framing;
    v->pin.heap = heap;
    v->pin.dma_adapter = subject_adapter(subj);
    v->vpin = (ks_verifier_pin){.verifier = verifier, .inner = subj->entry, .pin = &v->pin};
    v->framing = framing;
    snprintf(v->label, sizeof v->label, "%s via verifier [%s Frames=%u FrameSize=%u align=%zu%s]", subj->name,
             v->pin.name, (unsigned)framing.Frames, (unsigned)framing.FrameSize, ks_framing_align_bytes(&framing),
             (framing.RequirementsFlags & KSALLOCATOR_REQUIREMENTF_MUST_ALLOCATE) ? " must" : "");
    NTSTATUS status = ks_verifier_dispatch.InitializeAllocator(&v->vpin, &v->framing, &v->context);
    cr_assert_eq(status, STATUS_SUCCESS, "%s: InitializeAllocator returned %s", v->label, ks_status_name(status));
}

static void assert_no_faults(const ks_verifier *verifier, const char *label)
{
    uint64_t faults = ks_verifier_fault_count(verifier);
    if (faults == 0)
        return;
    const ks_fault *first = ks_verifier_fault_at(verifier, 0);
    cr_assert_fail("%s: %llu verifier fault(s); first: %s: %s", label, (unsigned long long)faults,
                   first ? ks_fault_kind_name(first->kind) : "?", first ? first->message : "?");
}

/* Fill, touch, free half, refill, touch, drain: the verifier checks every step. */
static void verified_exercise(verified *v)
{
    void *frames[MAX_TEST_FRAMES];
    size_t want = v->framing.Frames == 0 ? UNBOUNDED_TEST_FRAMES
                                         : (v->framing.Frames < MAX_TEST_FRAMES ? v->framing.Frames : MAX_TEST_FRAMES);
    size_t served = 0;
    while (served < want && (frames[served] = ks_verifier_dispatch.Allocate(v->context)) != NULL)
        served++;
    cr_assert(served > 0, "%s: no frame served", v->label);
    for (size_t index = 0; index < served; index++)
        ks_verifier_touch(v->context, frames[index]);
    for (size_t index = 0; index < served; index += 2)
        ks_verifier_dispatch.Free(v->context, frames[index]);
    for (size_t index = 0; index < served; index += 2) {
        frames[index] = ks_verifier_dispatch.Allocate(v->context);
        cr_assert_not_null(frames[index], "%s: no frame on refill %zu", v->label, index);
        ks_verifier_touch(v->context, frames[index]);
    }
    cr_assert_eq(ks_verifier_live(v->context), served, "%s: verifier counts %llu live, test holds %zu", v->label,
                 (unsigned long long)ks_verifier_live(v->context), served);
    for (size_t index = 0; index < served; index++)
        ks_verifier_dispatch.Free(v->context, frames[index]);
    ks_verifier_self_check(v->context);
}

CONFORMANCE_TEST(verifier_battery_finds_no_fault)
{
    subject subj;
    subject_open(param, &subj);
    ks_verifier *verifier = verifier_open();
    const ULONG sizes[] = {1, 100, 4096, 65536};
    const ULONG masks[] = {0, 7, 63, 4095};
    const ULONG frame_counts[] = {0, 1, 16};
    for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++)
        for (size_t a = 0; a < sizeof masks / sizeof masks[0]; a++)
            for (size_t f = 0; f < sizeof frame_counts / sizeof frame_counts[0]; f++)
                for (int must = 0; must < 2; must++) {
                    if (!framing_within_limits(subj.entry, sizes[s], (size_t)masks[a] + 1))
                        continue;
                    verified v;
                    verified_open(&v, verifier, &subj, ks_test_framing(frame_counts[f], sizes[s], masks[a], must), NULL,
                                  0);
                    verified_exercise(&v);
                    ks_verifier_dispatch.DeleteAllocator(v.context);
                    assert_no_faults(verifier, v.label);
                }
    ks_verifier_destroy(verifier);
    subject_close(&subj);
}

CONFORMANCE_TEST(verifier_random_ops_find_no_fault)
{
    subject subj;
    subject_open(param, &subj);
    ks_verifier *verifier = verifier_open();
    const KSALLOCATOR_FRAMING framings[] = {ks_test_framing(16, 300, 15, false), ks_test_framing(0, 2048, 255, false),
                                           ks_test_framing(24, 64, 63, true)};
    for (size_t index = 0; index < sizeof framings / sizeof framings[0]; index++) {
        verified v;
        verified_open(&v, verifier, &subj, framings[index], NULL, 0);
        void *frames[MAX_TEST_FRAMES];
        size_t live = 0, limit = v.framing.Frames ? (v.framing.Frames < MAX_TEST_FRAMES ? v.framing.Frames : MAX_TEST_FRAMES) : 32;
        uint64_t state = 0xC0FFEEu + index;
        for (unsigned op = 0; op < 3000; op++) {
            uint64_t roll = next_random(&state);
            size_t pick = live ? (size_t)(roll >> 32) % live : 0;
            if (live < limit && (live == 0 || roll % 3 == 0)) {
                void *frame = ks_verifier_dispatch.Allocate(v.context);
                if (frame != NULL)
                    frames[live++] = frame;
            } else if (roll % 3 == 1) {
                ks_verifier_touch(v.context, frames[pick]);
            } else {
                ks_verifier_dispatch.Free(v.context, frames[pick]);
                frames[pick] = frames[--live];
            }
        }
        while (live > 0)
            ks_verifier_dispatch.Free(v.context, frames[--live]);
        ks_verifier_dispatch.DeleteAllocator(v.context);
        assert_no_faults(verifier, v.label);
    }
    ks_verifier_destroy(verifier);
    subject_close(&subj);
}

CONFORMANCE_TEST(verifier_reports_frames_live_at_delete_as_leak)
{
    subject subj;
    subject_open(param, &subj);
    ks_verifier *verifier = verifier_open();
    verified v;
    verified_open(&v, verifier, &subj, ks_test_framing(8, 4096, 63, false), NULL, 0);
    for (unsigned index = 0; index < 3; index++)
        cr_assert_not_null(ks_verifier_dispatch.Allocate(v.context), "%s: frame %u", v.label, index);
    ks_verifier_dispatch.DeleteAllocator(v.context); /* the inner allocator releases them; LSan checks */
    uint64_t faults = ks_verifier_fault_count(verifier);
    cr_assert_gt(faults, 0, "%s: three frames live at DeleteAllocator, no fault", v.label);
    for (uint64_t index = 0; index < faults && ks_verifier_fault_at(verifier, index); index++)
        cr_assert_eq(ks_verifier_fault_at(verifier, index)->kind, KS_FAULT_LEAK, "%s: fault %llu is %s, not leak",
                     v.label, (unsigned long long)index,
                     ks_fault_kind_name(ks_verifier_fault_at(verifier, index)->kind));
    ks_verifier_destroy(verifier);
    subject_close(&subj);
}

CONFORMANCE_TEST(verifier_shared_heap_finds_no_overlap)
{
    subject subj;
    subject_open(param, &subj);
    skip_unless(&subj, KS_CAP_SHARED_HEAP, "KS_CAP_SHARED_HEAP");
    ks_heap *heap = NULL;
    ks_error err;
    ks_error_clear(&err);
    cr_assert_eq(ks_heap_create("conformance-verified", 32u << 20, &heap, &err), STATUS_SUCCESS, "%s", err.message);
    ks_verifier *verifier = verifier_open();
    verified pins[3];
    const ULONG sizes[] = {4096, 700, 65536};
    for (unsigned p = 0; p < 3; p++)
        verified_open(&pins[p], verifier, &subj,
                      ks_test_framing(16, has_cap(&subj, KS_CAP_ANY_SIZE) ? sizes[p] : 4096, 63, false), heap, p);
    for (unsigned p = 0; p < 3; p++)
        verified_exercise(&pins[p]);
    void *kept = ks_verifier_dispatch.Allocate(pins[0].context);
    cr_assert_not_null(kept);
    ks_verifier_dispatch.Free(pins[0].context, kept);
    for (unsigned p = 0; p < 3; p++)
        ks_verifier_dispatch.DeleteAllocator(pins[p].context);
    assert_no_faults(verifier, subj.name);
    ks_verifier_destroy(verifier);
    cr_assert_eq(ks_heap_destroy(heap, &err), STATUS_SUCCESS, "%s: %s", subj.name, err.message);
    subject_close(&subj);
}

/* ---- DMA: every frame is reachable by the device ---------------------------------------------- */

#define REACH_MAX_SEGMENTS 64u
#define REACH_FRAMES 12u

/* Checks one frame's segments against the device description; returns the bytes they cover. */
static uint64_t check_frame_reachable(const instance *inst, ks_dma_adapter *adapter, const void *frame,
                                      const char *spec)
{
    const ks_dma_device_description *device = ks_dma_adapter_description(adapter);
    uint64_t mask = ks_dma_adapter_mask(adapter);
    ks_dma_frame_info info;
    ks_dma_segment segments[REACH_MAX_SEGMENTS];
    ks_error err;
    ks_error_clear(&err);
    NTSTATUS status = ks_dma_frame_lookup(adapter, frame, &info, segments, REACH_MAX_SEGMENTS, &err);
    cr_assert_eq(status, STATUS_SUCCESS, "%s on %s: frame %p is not in the frame registry: %s", inst->label, spec,
                 frame, err.message);
    cr_assert_leq(info.segment_count, REACH_MAX_SEGMENTS, "%s on %s: %u segments", inst->label, spec,
                  info.segment_count);
    cr_assert(device->max_segments == 0 || info.segment_count <= device->max_segments,
              "%s on %s: frame %p has %u segments, the device takes %u", inst->label, spec, frame,
              info.segment_count, device->max_segments);
    uint64_t covered = 0;
    for (uint32_t index = 0; index < info.segment_count; index++) {
        const ks_dma_segment *seg = &segments[index];
        uint64_t last = seg->bus_addr + seg->bytes - 1;
        cr_assert(seg->bytes > 0 && last >= seg->bus_addr && last <= mask,
                  "%s on %s: frame %p segment %u [0x%llx, +%llu) beyond mask 0x%llx", inst->label, spec, frame, index,
                  (unsigned long long)seg->bus_addr, (unsigned long long)seg->bytes, (unsigned long long)mask);
        cr_assert(device->boundary_bytes == 0 ||
                      seg->bus_addr / device->boundary_bytes == last / device->boundary_bytes,
                  "%s on %s: frame %p segment %u at 0x%llx +%llu crosses the %llu-byte boundary", inst->label, spec,
                  frame, index, (unsigned long long)seg->bus_addr, (unsigned long long)seg->bytes,
                  (unsigned long long)device->boundary_bytes);
        cr_assert(device->max_segment_bytes == 0 || seg->bytes <= device->max_segment_bytes,
                  "%s on %s: frame %p segment %u of %llu bytes, the device takes %llu", inst->label, spec, frame,
                  index, (unsigned long long)seg->bytes, (unsigned long long)device->max_segment_bytes);
        cr_assert(device->align_bytes <= 1 || seg->bus_addr % device->align_bytes == 0,
                  "%s on %s: frame %p segment %u at 0x%llx is not %u-aligned", inst->label, spec, frame, index,
                  (unsigned long long)seg->bus_addr, device->align_bytes);
        covered += seg->bytes;
    }
    cr_assert_eq(covered, info.bytes, "%s on %s: frame %p segments cover %llu of %zu bytes", inst->label, spec, frame,
                 (unsigned long long)covered, info.bytes);
    return covered;
}

/* Fills the instance and checks every frame on the device; no DMA-debug report may result. */
static void check_instance_reachable(instance *inst, ks_dma_adapter *adapter, const char *spec)
{
    void *frames[REACH_FRAMES];
    size_t served = 0;
    while (served < REACH_FRAMES && (frames[served] = instance_allocate(inst)) != NULL)
        served++;
    cr_assert_gt(served, 0, "%s on %s: no frame served", inst->label, spec);
    for (size_t index = 0; index < served; index++) {
        uint64_t covered = check_frame_reachable(inst, adapter, frames[index], spec);
        cr_assert_geq(covered, inst->framing.FrameSize, "%s on %s: frame %zu covers %llu bytes of FrameSize %u",
                      inst->label, spec, index, (unsigned long long)covered, (unsigned)inst->framing.FrameSize);
    }
    for (size_t index = 0; index < served; index++)
        instance_free(inst, frames[index]);
    cr_assert_eq(ks_dma_report_count(adapter), 0, "%s on %s: the checker reported the allocator's frames",
                 inst->label, spec);
}

CONFORMANCE_TEST(dma_frames_are_reachable_by_the_device)
{
    subject subj;
    subject_open(param, &subj);
    skip_unless(&subj, KS_CAP_DMA, "KS_CAP_DMA");
    static const char *const specs[] = {
        "mask=32,sg=1,max_seg=16K,boundary=64K",
        "mask=32,sg=1,iommu=1,boundary=32K,align=512",
        "mask=32,coherent=0,sg=1,max_seg=8K,max_segs=64",
        "mask=36,coherent=0,sg=1,iommu=1",
    };
    const ULONG sizes[] = {4096, 24000, 100};
    for (size_t s = 0; s < sizeof specs / sizeof specs[0]; s++) {
        ks_dma_device *device = dma_device_open(specs[s]);
        ks_dma_adapter *adapter = ks_dma_device_adapter(device);
        for (size_t z = 0; z < sizeof sizes / sizeof sizes[0]; z++) {
            if (!framing_within_limits(subj.entry, sizes[z], 64))
                continue;
            KSALLOCATOR_FRAMING framing = ks_test_framing(REACH_FRAMES, sizes[z], 63, false);
            instance inst;
            memset(&inst, 0, sizeof inst);
            inst.subj = &subj;
            inst.pin.abi_version = KSALLOC_ABI_VERSION;
            inst.pin.name = pin_names[0];
            inst.pin.framing = framing;
            inst.pin.dma_adapter = adapter;
            inst.requested = framing;
            inst.framing = framing;
            snprintf(inst.label, sizeof inst.label, "%s [FrameSize=%u]", subj.name, (unsigned)sizes[z]);
            NTSTATUS status = subj.entry->dispatch->InitializeAllocator(&inst.pin, &inst.framing, &inst.context);
            /* A frame longer than one segment may be refused (dma_pool's blocks are single
             * segments); one the device takes whole may not. */
            uint64_t max_segment_bytes = ks_dma_adapter_description(adapter)->max_segment_bytes;
            if (!NT_SUCCESS(status) && max_segment_bytes != 0 && sizes[z] > max_segment_bytes)
                continue;
            cr_assert_eq(status, STATUS_SUCCESS, "%s on %s: InitializeAllocator returned %s", inst.label, specs[s],
                         ks_status_name(status));
            check_instance_reachable(&inst, adapter, specs[s]);
            instance_delete(&inst);
        }
        dma_device_close(device, specs[s]);
    }
    subject_close(&subj);
}

#if LEAK_CHECK
/* ---- The leak check itself -------------------------------------------------------------------- */

#define HIDE_MASK ((uintptr_t)0x5A5A5A5A5A5A5A5Au)

/* A block whose only trace is its address masked, so no scan can recognise a pointer to it. */
__attribute__((noinline)) static uintptr_t allocate_hidden(size_t bytes)
{
    unsigned char *block = malloc(bytes);
    if (block != NULL)
        memset(block, 0x11, bytes);
    return (uintptr_t)block ^ HIDE_MASK;
}

/* The control for delete_with_frames_live_releases_them: a block nothing points to must be
 * reported, or that test proves nothing. Run in a child with stderr silenced, so that the
 * expected report does not read as a failure in the suite's log. */
Test(leak_check, reports_a_block_nothing_points_to)
{
    pid_t child = fork();
    cr_assert_geq(child, 0, "fork");
    if (child == 0) {
        int null_fd = open("/dev/null", O_WRONLY);
        if (null_fd >= 0)
            dup2(null_fd, STDERR_FILENO);
        /* A conservative scan may still find the block's address in a dead stack slot or a
         * register (seen once in a loaded make test): three tries, each a new block, and one
         * report is enough; LeakSanitizer not working misses all three. */
        int leaked = 0;
        for (int attempt = 0; attempt < 3 && !leaked; attempt++) {
            uintptr_t hidden = allocate_hidden(4096);
            leaked = __lsan_do_recoverable_leak_check();
            free((void *)(hidden ^ HIDE_MASK));
        }
        _exit(leaked ? 0 : 1);
    }
    int status = 0;
    cr_assert_eq(waitpid(child, &status, 0), child);
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0,
              "LeakSanitizer missed a block nothing points to (is detect_leaks=0 set?)");
}
#endif

/* ---- The catalogue itself --------------------------------------------------------------------- */

Test(catalogue, entries_are_valid_unique_and_findable)
{
    size_t count = ks_catalogue_count();
    cr_assert_geq(count, 4, "the catalogue lost one of the first four allocators");
    for (size_t index = 0; index < count; index++) {
        const ks_allocator_entry *entry = ks_catalogue_at(index);
        cr_assert_not_null(entry, "entry %zu", index);
        ks_error err;
        ks_error_clear(&err);
        cr_assert_eq(ks_entry_validate(entry, "built-in", &err), STATUS_SUCCESS, "%s", err.message);
        cr_assert_eq(ks_catalogue_find(entry->name), entry, "%s is not found by its own name", entry->name);
        for (size_t other = 0; other < index; other++)
            cr_assert_str_neq(entry->name, ks_catalogue_at(other)->name, "two entries are named %s", entry->name);
    }
    cr_assert_null(ks_catalogue_at(count));
    cr_assert_null(ks_catalogue_find("no-such-allocator"));
    cr_assert_null(ks_catalogue_find(NULL));
    const char *first_four[] = {"system", "jemalloc", "lookaside", "pool"};
    for (size_t index = 0; index < 4; index++)
        cr_assert_not_null(ks_catalogue_find(first_four[index]), "%s is missing", first_four[index]);
}

/* A bare hook must have both functions; an entry built before the member existed (struct_bytes
 * short of it) is not read there at all. */
Test(catalogue, a_bare_hook_is_validated_only_where_struct_bytes_covers_it)
{
    const ks_allocator_entry *system = ks_catalogue_find("system");
    cr_assert_not_null(system);
    cr_assert_not_null(entry_bare(system), "system lost its bare hook");
    ks_bare_ops half = *system->bare;
    half.free = NULL;
    ks_allocator_entry entry = *system;
    entry.bare = &half;
    ks_error err;
    ks_error_clear(&err);
    cr_assert_eq(ks_entry_validate(&entry, "test", &err), STATUS_INVALID_IMAGE_FORMAT, "a bare hook without free");
    cr_assert_not_null(strstr(err.message, "bare->free"), "%s", err.message);
    entry.struct_bytes = (ULONG)offsetof(ks_allocator_entry, bare); /* an older entry: bare is not its member */
    ks_error_clear(&err);
    cr_assert_eq(ks_entry_validate(&entry, "test", &err), STATUS_SUCCESS, "%s", err.message);
    const char *peers[] = {"system", "jemalloc", "mimalloc", "tcmalloc"};
    for (size_t index = 0; index < ks_catalogue_count(); index++) {
        const ks_allocator_entry *each = ks_catalogue_at(index);
        bool peer = false;
        for (size_t p = 0; p < sizeof peers / sizeof peers[0]; p++)
            peer = peer || strcmp(each->name, peers[p]) == 0;
        cr_assert_eq(entry_bare(each) != NULL, peer, "%s: a bare hook is for the general-purpose peers only",
                     each->name);
    }
}

/* ---- pool --------------------------------------------------------------------------------------- */

static subject builtin_subject(const char *name)
{
    subject subj;
    memset(&subj, 0, sizeof subj);
    subj.entry = ks_catalogue_find(name);
    cr_assert_not_null(subj.entry, "%s is not in the catalogue", name);
    subj.name = subj.entry->name;
    return subj;
}

static void expect_self_check_failure(const instance *inst, const char *needle, const char *what)
{
    char why[512] = "";
    NTSTATUS status = inst->subj->entry->self_check(inst->context, why, sizeof why);
    cr_assert_neq(status, STATUS_SUCCESS, "%s: self_check missed %s", inst->label, what);
    cr_assert_not_null(strstr(why, needle), "%s: self_check on %s said '%s', expected '%s'", inst->label, what, why,
                       needle);
}

Test(pool, stride_counters_and_lifo_order)
{
    subject subj = builtin_subject("pool");
    KSALLOCATOR_FRAMING framing = ks_test_framing(10, 100, 63, false);
    instance inst;
    instance_open_ok(&inst, &subj, &framing, NULL, 0);
    cr_assert_eq(counter_value(&inst, "stride_bytes"), 128, "100 bytes at 64-byte alignment");
    cr_assert_eq(counter_value(&inst, "frames"), 10);
    cr_assert_eq(counter_value(&inst, "reserved_bytes"), 10 * 128);
    void *a = instance_allocate(&inst), *b = instance_allocate(&inst);
    cr_assert_eq((uintptr_t)b - (uintptr_t)a, 128, "consecutive frames of a fresh pool are one stride apart");
    instance_free(&inst, a);
    instance_free(&inst, b);
    cr_assert_eq(instance_allocate(&inst), b, "LIFO: the last frame freed comes back first");
    cr_assert_eq(instance_allocate(&inst), a);
    instance_delete(&inst);
}

Test(pool, tiny_frames_still_hold_the_free_list_link)
{
    subject subj = builtin_subject("pool");
    KSALLOCATOR_FRAMING framing = ks_test_framing(5, 1, 0, false);
    instance inst;
    instance_open_ok(&inst, &subj, &framing, NULL, 0);
    cr_assert_geq(counter_value(&inst, "stride_bytes"), sizeof(void *));
    cr_assert_eq(counter_value(&inst, "stride_bytes") % _Alignof(void *), 0);
    instance_delete(&inst);
}

Test(pool, self_check_catches_a_frame_outside_the_block)
{
    subject subj = builtin_subject("pool");
    KSALLOCATOR_FRAMING framing = ks_test_framing(4, 64, 7, false);
    instance inst;
    instance_open_ok(&inst, &subj, &framing, NULL, 0);
    static uint64_t foreign[8];
    instance_free(&inst, foreign);
    expect_self_check_failure(&inst, "outside the block", "a foreign frame on the free list");
    instance_delete(&inst);
}

Test(pool, self_check_catches_a_frame_off_the_stride)
{
    subject subj = builtin_subject("pool");
    KSALLOCATOR_FRAMING framing = ks_test_framing(4, 64, 7, false);
    instance inst;
    instance_open_ok(&inst, &subj, &framing, NULL, 0);
    char *frame = instance_allocate(&inst);
    instance_free(&inst, frame + 8);
    expect_self_check_failure(&inst, "past a frame start", "a frame pointer 8 bytes into a frame");
    instance_delete(&inst);
}

Test(pool, self_check_catches_a_double_free)
{
    subject subj = builtin_subject("pool");
    KSALLOCATOR_FRAMING framing = ks_test_framing(4, 64, 7, false);
    instance inst;
    instance_open_ok(&inst, &subj, &framing, NULL, 0);
    void *frame = instance_allocate(&inst);
    instance_free(&inst, frame);
    instance_free(&inst, frame); /* the list now loops through frame: the walk must still end */
    expect_self_check_failure(&inst, "twice", "a double free");
    instance_delete(&inst);
}

/* Frames are handed out from a bump cursor until the free list has some: initialisation touches
 * none, every frame is still served once, in address order, before NULL. */
Test(pool, frames_never_handed_out_stay_untouched_until_needed)
{
    subject subj = builtin_subject("pool");
    KSALLOCATOR_FRAMING framing = ks_test_framing(3, 64, 63, false);
    instance inst;
    instance_open_ok(&inst, &subj, &framing, NULL, 0);
    cr_assert_eq(counter_value(&inst, "untouched_frames"), 3);
    char *a = instance_allocate(&inst);
    cr_assert_eq(counter_value(&inst, "untouched_frames"), 2);
    instance_free(&inst, a);
    cr_assert_eq(instance_allocate(&inst), a, "the free list is used before the cursor");
    cr_assert_eq(counter_value(&inst, "untouched_frames"), 2);
    char *b = instance_allocate(&inst), *c = instance_allocate(&inst);
    cr_assert_eq(b, a + 64);
    cr_assert_eq(c, a + 128);
    cr_assert_eq(counter_value(&inst, "untouched_frames"), 0);
    cr_assert_null(instance_allocate(&inst), "Frames frames, then NULL");
    instance_free(&inst, b);
    cr_assert_eq(instance_allocate(&inst), b);
    instance_delete(&inst);
}

Test(pool, self_check_catches_a_free_of_a_frame_never_handed_out)
{
    subject subj = builtin_subject("pool");
    KSALLOCATOR_FRAMING framing = ks_test_framing(4, 64, 7, false);
    instance inst;
    instance_open_ok(&inst, &subj, &framing, NULL, 0);
    char *frame = instance_allocate(&inst);
    instance_free(&inst, frame + 2 * 64); /* inside the block, on the stride, past the cursor */
    expect_self_check_failure(&inst, "never handed out", "a free of a frame the pool never handed out");
    instance_delete(&inst);
}

/* magazine takes frames never handed out from a cursor too, after its backing stack. */
Test(magazine, frames_never_handed_out_stay_untouched_until_needed)
{
    subject subj = builtin_subject("magazine");
    KSALLOCATOR_FRAMING framing = ks_test_framing(3, 64, 63, false);
    instance inst;
    instance_open_ok(&inst, &subj, &framing, NULL, 0);
    cr_assert_eq(counter_value(&inst, "untouched_frames"), 3);
    char *a = instance_allocate(&inst), *b = instance_allocate(&inst), *c = instance_allocate(&inst);
    cr_assert_eq(b, a + 64, "fresh frames come in address order");
    cr_assert_eq(c, a + 128);
    cr_assert_eq(counter_value(&inst, "untouched_frames"), 0);
    cr_assert_null(instance_allocate(&inst), "Frames frames, then NULL");
    check_self(&inst, "with every frame live");
    instance_free(&inst, b);
    cr_assert_eq(instance_allocate(&inst), b);
    instance_free(&inst, a);
    instance_free(&inst, b);
    instance_free(&inst, c);
    check_self(&inst, "with every frame free");
    instance_delete(&inst);
}

Test(magazine, self_check_catches_a_free_of_a_frame_never_handed_out)
{
    subject subj = builtin_subject("magazine");
    KSALLOCATOR_FRAMING framing = ks_test_framing(4, 64, 7, false);
    instance inst;
    instance_open_ok(&inst, &subj, &framing, NULL, 0);
    char *frame = instance_allocate(&inst);
    instance_free(&inst, frame + 2 * 64); /* inside the block, on the stride, past the cursor */
    expect_self_check_failure(&inst, "never handed out", "a free of a frame the magazine never handed out");
    instance_delete(&inst);
}

Test(pool, oversized_pool_is_refused_as_resources)
{
    subject subj = builtin_subject("pool");
    KSALLOCATOR_FRAMING framing = ks_test_framing(0xFFFFFFFFu, 1u << 20, 0, false);
    instance inst;
    NTSTATUS status = instance_open(&inst, &subj, &framing, NULL, 0);
    cr_assert_eq(status, STATUS_INSUFFICIENT_RESOURCES, "4 G frames of 1 MiB gave %s", ks_status_name(status));
}

/* ---- lookaside -------------------------------------------------------------------------------- */

Test(lookaside, hits_misses_refusals_and_depth)
{
    subject subj = builtin_subject("lookaside");
    KSALLOCATOR_FRAMING framing = ks_test_framing(4, 256, 15, false);
    instance inst;
    instance_open_ok(&inst, &subj, &framing, NULL, 0);
    cr_assert_eq(counter_value(&inst, "depth"), 4, "depth is min(Frames, 64)");
    void *frames[4];
    for (size_t index = 0; index < 4; index++)
        frames[index] = instance_allocate(&inst);
    cr_assert_null(instance_allocate(&inst));
    cr_assert_eq(counter_value(&inst, "misses"), 4);
    cr_assert_eq(counter_value(&inst, "hits"), 0);
    cr_assert_eq(counter_value(&inst, "refusals"), 1);
    free_frames(&inst, frames, 4);
    cr_assert_eq(counter_value(&inst, "listed"), 4, "freed frames stay on the lookaside list");
    for (size_t index = 0; index < 4; index++)
        frames[index] = instance_allocate(&inst);
    cr_assert_eq(counter_value(&inst, "hits"), 4, "the second round comes from the list");
    cr_assert_eq(counter_value(&inst, "misses"), 4);
    free_frames(&inst, frames, 4);
    instance_delete(&inst);
}

Test(lookaside, depth_defaults)
{
    subject subj = builtin_subject("lookaside");
    const struct {
        ULONG frames;
        bool must;
        uint64_t depth;
    } cases[] = {{0, false, 16}, {10, false, 10}, {64, false, 64}, {1000, false, 64}, {100, true, 100}};
    for (size_t index = 0; index < sizeof cases / sizeof cases[0]; index++) {
        KSALLOCATOR_FRAMING framing = ks_test_framing(cases[index].frames, 64, 0, cases[index].must);
        instance inst;
        instance_open_ok(&inst, &subj, &framing, NULL, 0);
        cr_assert_eq(counter_value(&inst, "depth"), cases[index].depth, "%s: depth %llu", inst.label,
                     (unsigned long long)counter_value(&inst, "depth"));
        instance_delete(&inst);
    }
}

Test(lookaside, full_list_returns_frames_to_the_heap)
{
    subject subj = builtin_subject("lookaside");
    KSALLOCATOR_FRAMING framing = ks_test_framing(0, 128, 0, false); /* unbounded, depth 16 */
    instance inst;
    instance_open_ok(&inst, &subj, &framing, NULL, 0);
    void *frames[40];
    for (size_t index = 0; index < 40; index++)
        frames[index] = instance_allocate(&inst);
    free_frames(&inst, frames, 40);
    cr_assert_eq(counter_value(&inst, "listed"), 16, "the list keeps depth frames, the rest go back");
    cr_assert_eq(counter_value(&inst, "frames_live"), 0);
    check_self(&inst, "after overflowing the list");
    instance_delete(&inst);
}

Test(lookaside, must_allocate_prefills_every_promised_frame)
{
    subject subj = builtin_subject("lookaside");
    KSALLOCATOR_FRAMING framing = ks_test_framing(8, 4096, 4095, true);
    instance inst;
    instance_open_ok(&inst, &subj, &framing, NULL, 0);
    cr_assert_eq(counter_value(&inst, "listed"), 8);
    void *frames[8];
    for (size_t index = 0; index < 8; index++)
        frames[index] = instance_allocate(&inst);
    cr_assert_eq(counter_value(&inst, "hits"), 8, "every promised frame was already held");
    cr_assert_eq(counter_value(&inst, "misses"), 0);
    check_frames(inst.label, frames, 8, 4096, 4096);
    free_frames(&inst, frames, 8);
    instance_delete(&inst);
}

Test(lookaside, self_check_catches_a_free_of_a_frame_not_live)
{
    subject subj = builtin_subject("lookaside");
    KSALLOCATOR_FRAMING framing = ks_test_framing(4, 64, 7, false);
    instance inst;
    instance_open_ok(&inst, &subj, &framing, NULL, 0);
    void *frame = instance_allocate(&inst);
    instance_free(&inst, frame);
    check_self(&inst, "after a proper free");
    instance_free(&inst, frame); /* a double free: ignored, counted, reported */
    cr_assert_eq(counter_value(&inst, "bad_frees"), 1);
    expect_self_check_failure(&inst, "not live", "a double free");
    instance_delete(&inst);
}

/* ---- system --------------------------------------------------------------------------------- */

#if !SANITIZER_HEAP
/* Bytes glibc's malloc has handed out: in use from its arenas plus its mmap'ed chunks. With
 * jemalloc linked, malloc and friends are jemalloc's and leave these numbers alone, so they move
 * only for memory that really came from glibc. */
static size_t glibc_bytes_in_use(void)
{
    struct mallinfo2 info = mallinfo2();
    return info.uordblks + info.hblkhd;
}
#endif

Test(system, frames_come_from_glibc_and_are_released_at_delete)
{
    subject subj = builtin_subject("system");
    const ULONG sizes[] = {65536, 1u << 20}; /* below and above glibc's mmap threshold */
    for (size_t s = 0; s < 2; s++) {
        KSALLOCATOR_FRAMING framing = ks_test_framing(0, sizes[s], 4095, false);
        instance inst;
        instance_open_ok(&inst, &subj, &framing, NULL, 0);
#if SANITIZER_HEAP
        /* Sanitizer builds: glibc's __libc_memalign is intercepted, so system documents using the
         * sanitizer's heap; prove that is where the frame lives. */
        void *frame = instance_allocate(&inst);
        cr_assert(__sanitizer_get_ownership(frame), "%s: frame %p is not from the sanitizer's heap", inst.label, frame);
        instance_delete(&inst); /* with the frame live: LeakSanitizer checks it was freed */
#else
        size_t before = glibc_bytes_in_use();
        void *frames[4];
        for (size_t index = 0; index < 4; index++)
            frames[index] = instance_allocate(&inst);
        size_t during = glibc_bytes_in_use();
        cr_assert_geq(during - before, 4 * (size_t)sizes[s], "%s: glibc's heap grew by %zu bytes for 4 frames",
                      inst.label, during - before);
        instance_free(&inst, frames[0]);
        instance_delete(&inst); /* three frames still live */
        size_t after = glibc_bytes_in_use();
        cr_assert_lt(after, before + sizes[s], "%s: %zu bytes still held by glibc after DeleteAllocator", inst.label,
                     after - before);
#endif
    }
}

#if !SANITIZER_HEAP
/* The control that makes the test above mean something: memory from jemalloc, the process's
 * malloc here, does not move glibc's numbers. */
Test(system, control_jemalloc_frames_do_not_touch_glibc)
{
    size_t before = glibc_bytes_in_use();
    void *block = malloc(1u << 20);
    subject subj = builtin_subject("jemalloc");
    KSALLOCATOR_FRAMING framing = ks_test_framing(0, 1u << 20, 4095, false);
    instance inst;
    instance_open_ok(&inst, &subj, &framing, NULL, 0);
    void *frame = instance_allocate(&inst);
    cr_assert_not_null(frame);
    memset(block, 1, 1u << 20);
    size_t after = glibc_bytes_in_use();
    cr_assert_lt(after - before, 1u << 20, "malloc or jemalloc frames grew glibc's heap by %zu bytes", after - before);
    instance_free(&inst, frame);
    instance_delete(&inst);
    free(block);
}
#endif

Test(system, free_of_a_frame_not_live_is_reported_not_passed_on)
{
    subject subj = builtin_subject("system");
    KSALLOCATOR_FRAMING framing = ks_test_framing(0, 64, 0, false);
    instance inst;
    instance_open_ok(&inst, &subj, &framing, NULL, 0);
    void *frame = instance_allocate(&inst);
    instance_free(&inst, frame);
    static char not_a_frame[64];
    instance_free(&inst, not_a_frame); /* handing this to glibc would abort the process */
    cr_assert_eq(counter_value(&inst, "bad_frees"), 1);
    expect_self_check_failure(&inst, "not live", "a free of static memory");
    instance_delete(&inst);
}

Test(tcmalloc, free_of_a_frame_not_live_is_reported_not_passed_on)
{
    subject subj = builtin_subject("tcmalloc");
    KSALLOCATOR_FRAMING framing = ks_test_framing(0, 64, 0, false);
    instance inst;
    instance_open_ok(&inst, &subj, &framing, NULL, 0);
    void *frame = instance_allocate(&inst);
    instance_free(&inst, frame);
    static char not_a_frame[64];
    instance_free(&inst, not_a_frame); /* tc_free of static memory would corrupt tcmalloc */
    instance_free(&inst, frame);       /* and a double free */
    cr_assert_eq(counter_value(&inst, "bad_frees"), 2);
    expect_self_check_failure(&inst, "not live", "a free of static memory and a double free");
    instance_delete(&inst);
}

/* ---- jemalloc ------------------------------------------------------------------------------- */

/* The defaults of KS_JEMALLOC_IDLE_ARENAS, KS_JEMALLOC_IDLE_ARENA_MAX_BYTES and
 * KS_JEMALLOC_TCACHE_AFTER_CALLS in allocators/jemalloc.c. */
#define JEMALLOC_IDLE_ARENAS 8u
#define JEMALLOC_IDLE_ARENA_MAX_BYTES ((size_t)8 << 20)
#define JEMALLOC_TCACHE_AFTER_CALLS 256u

static unsigned jemalloc_arena_of(void *frame)
{
    unsigned arena = UINT32_MAX;
    size_t arena_bytes = sizeof arena;
    cr_assert_eq(mallctl("arenas.lookup", &arena, &arena_bytes, &frame, sizeof frame), 0, "arenas.lookup(%p)", frame);
    return arena;
}

/* Whether the arena exists: jemalloc answers EFAULT for a destroyed arena's index (until a new
 * arena takes the index over, which these tests do not do in between). */
static bool jemalloc_arena_exists(unsigned arena)
{
    char name[64];
    ssize_t decay_ms = 0;
    size_t decay_bytes = sizeof decay_ms;
    snprintf(name, sizeof name, "arena.%u.dirty_decay_ms", arena);
    return mallctl(name, &decay_ms, &decay_bytes, NULL, 0) == 0;
}

/* stats.arenas.<arena>.<stat> after an epoch refresh; the arena must exist. */
static size_t jemalloc_arena_stat_now(unsigned arena, const char *stat)
{
    uint64_t epoch = 1;
    size_t epoch_bytes = sizeof epoch;
    cr_assert_eq(mallctl("epoch", &epoch, &epoch_bytes, &epoch, epoch_bytes), 0);
    char name[96];
    size_t value = 0, value_bytes = sizeof value;
    snprintf(name, sizeof name, "stats.arenas.%u.%s", arena, stat);
    cr_assert_eq(mallctl(name, &value, &value_bytes, NULL, 0), 0, "mallctl(%s)", name);
    return value;
}

/* A parked arena: it exists, and its reset left it no active page and no allocated byte. */
static void expect_parked_and_empty(unsigned arena, const char *what)
{
    cr_assert(jemalloc_arena_exists(arena), "%s: arena %u was destroyed, not parked", what, arena);
    cr_assert_eq(jemalloc_arena_stat_now(arena, "pactive"), 0, "%s: parked arena %u has active pages", what, arena);
    cr_assert_eq(jemalloc_arena_stat_now(arena, "small.allocated"), 0, "%s: parked arena %u holds small frames",
                 what, arena);
    cr_assert_eq(jemalloc_arena_stat_now(arena, "large.allocated"), 0, "%s: parked arena %u holds large frames",
                 what, arena);
}

static int compare_pointers(const void *left, const void *right)
{
    uintptr_t a = (uintptr_t) * (void *const *)left, b = (uintptr_t) * (void *const *)right;
    return (a > b) - (a < b);
}

Test(jemalloc, private_instances_have_their_own_arenas)
{
    subject subj = builtin_subject("jemalloc");
    KSALLOCATOR_FRAMING framing = ks_test_framing(0, 4096, 63, false);
    instance first, second;
    instance_open_ok(&first, &subj, &framing, NULL, 0);
    instance_open_ok(&second, &subj, &framing, NULL, 1);
    uint64_t first_arena = counter_value(&first, "arena"), second_arena = counter_value(&second, "arena");
    cr_assert_neq(first_arena, second_arena, "two private instances share arena %llu",
                  (unsigned long long)first_arena);
    void *a = instance_allocate(&first), *b = instance_allocate(&second);
    cr_assert_eq(jemalloc_arena_of(a), first_arena, "frame %p is not from the instance's arena", a);
    cr_assert_eq(jemalloc_arena_of(b), second_arena, "frame %p is not from the instance's arena", b);
    instance_free(&first, a);
    instance_free(&second, b);
    instance_delete(&first);
    instance_delete(&second);
}

/* A thread's explicit tcache comes after its first JEMALLOC_TCACHE_AFTER_CALLS calls (Allocate or
 * Free) of the instance, and frames allocated before it are freed through it without harm. */
Test(jemalloc, a_thread_takes_its_explicit_tcache_after_its_first_calls)
{
    subject subj = builtin_subject("jemalloc");
    KSALLOCATOR_FRAMING framing = ks_test_framing(0, 256, 15, false);
    instance inst;
    instance_open_ok(&inst, &subj, &framing, NULL, 0);
    unsigned arena = (unsigned)counter_value(&inst, "arena");
    cr_assert_eq(counter_value(&inst, "explicit_tcache"), 0, "a tcache before the first call");
    void *early[8];
    for (unsigned index = 0; index < 8; index++)
        cr_assert_not_null(early[index] = instance_allocate(&inst));
    cr_assert_eq(counter_value(&inst, "explicit_tcache"), 0, "a tcache after 8 calls");
    unsigned calls = 8;
    void *held = NULL; /* alternately Allocate and Free, checking after each call */
    while (counter_value(&inst, "explicit_tcache") == 0 && calls < 4 * JEMALLOC_TCACHE_AFTER_CALLS) {
        if (held == NULL) {
            cr_assert_not_null(held = instance_allocate(&inst));
        } else {
            instance_free(&inst, held);
            held = NULL;
        }
        calls++;
    }
    cr_assert_eq(calls, JEMALLOC_TCACHE_AFTER_CALLS, "the tcache came after %u calls, not %u", calls,
                 JEMALLOC_TCACHE_AFTER_CALLS);
    if (held != NULL)
        instance_free(&inst, held);
    for (unsigned index = 0; index < 8; index++) { /* allocated without the tcache, freed through it */
        cr_assert_eq(jemalloc_arena_of(early[index]), arena);
        instance_free(&inst, early[index]);
    }
    void *late = instance_allocate(&inst);
    cr_assert_eq(jemalloc_arena_of(late), arena, "frame %p from the tcache is not of arena %u", late, arena);
    cr_assert_eq(counter_value(&inst, "threads"), 1);
    check_self(&inst, "after the switch to the tcache");
    instance_delete(&inst);
}

/* DeleteAllocator resets the arena and parks it (it used to destroy it): the arena still exists,
 * holds nothing, and ks_jemalloc_idle_trim destroys it. Large frames (64 KiB: extents) and small
 * ones (256 B: slabs, some in the tcache) are left live at DeleteAllocator. */
Test(jemalloc, delete_resets_and_parks_the_private_arena)
{
    subject subj = builtin_subject("jemalloc");
    ks_jemalloc_idle_trim();
    KSALLOCATOR_FRAMING large = ks_test_framing(0, 65536, 63, false), small = ks_test_framing(0, 256, 15, false);
    instance large_inst, small_inst;
    instance_open_ok(&large_inst, &subj, &large, NULL, 0);
    instance_open_ok(&small_inst, &subj, &small, NULL, 1);
    unsigned large_arena = (unsigned)counter_value(&large_inst, "arena");
    unsigned small_arena = (unsigned)counter_value(&small_inst, "arena");
    for (unsigned index = 0; index < 8; index++)
        memset(instance_allocate(&large_inst), 0x5a, 65536);
    void *small_frames[2 * JEMALLOC_TCACHE_AFTER_CALLS];
    for (unsigned index = 0; index < 2 * JEMALLOC_TCACHE_AFTER_CALLS; index++)
        cr_assert_not_null(small_frames[index] = instance_allocate(&small_inst));
    for (unsigned index = 0; index < JEMALLOC_TCACHE_AFTER_CALLS; index += 2)
        instance_free(&small_inst, small_frames[index]); /* into the tcache */
    cr_assert_eq(counter_value(&small_inst, "explicit_tcache"), 1);
    cr_assert_gt(jemalloc_arena_stat_now(large_arena, "large.allocated"), 0, "the test's own control");
    cr_assert_gt(jemalloc_arena_stat_now(small_arena, "small.allocated"), 0, "the test's own control");
    instance_delete(&large_inst); /* eight frames live */
    instance_delete(&small_inst); /* 384 frames live, 128 in the tcache */
    expect_parked_and_empty(large_arena, "64 KiB frames");
    expect_parked_and_empty(small_arena, "256-byte frames");
    cr_assert_eq(ks_jemalloc_idle_trim(), 2, "the two arenas should have been parked");
    cr_assert_not(jemalloc_arena_exists(large_arena), "arena %u survived ks_jemalloc_idle_trim", large_arena);
    cr_assert_not(jemalloc_arena_exists(small_arena), "arena %u survived ks_jemalloc_idle_trim", small_arena);
    cr_assert_eq(ks_jemalloc_idle_trim(), 0);
}

/* The next instance takes the parked arena, gets none of its earlier frames twice, and two
 * instances open together never share one. */
Test(jemalloc, the_next_instance_reuses_a_parked_arena_alone)
{
    subject subj = builtin_subject("jemalloc");
    ks_jemalloc_idle_trim();
    KSALLOCATOR_FRAMING framing = ks_test_framing(0, 256, 15, false);
    enum { FRAMES = 3 * JEMALLOC_TCACHE_AFTER_CALLS };
    instance first;
    instance_open_ok(&first, &subj, &framing, NULL, 0);
    cr_assert_eq(counter_value(&first, "arena_reused"), 0, "nothing was parked");
    unsigned first_arena = (unsigned)counter_value(&first, "arena");
    for (unsigned index = 0; index < FRAMES; index++) {
        void *frame = instance_allocate(&first);
        if (index % 2)
            instance_free(&first, frame);
    }
    instance_delete(&first);
    instance reuser, other;
    instance_open_ok(&reuser, &subj, &framing, NULL, 0);
    instance_open_ok(&other, &subj, &framing, NULL, 1);
    cr_assert_eq(counter_value(&reuser, "arena"), first_arena, "the parked arena was not taken");
    cr_assert_eq(counter_value(&reuser, "arena_reused"), 1);
    cr_assert_neq(counter_value(&other, "arena"), first_arena, "two open instances share the parked arena");
    cr_assert_eq(counter_value(&other, "arena_reused"), 0);
    static void *frames[FRAMES];
    for (unsigned index = 0; index < FRAMES; index++) {
        cr_assert_not_null(frames[index] = instance_allocate(&reuser));
        cr_assert_eq(jemalloc_arena_of(frames[index]), first_arena);
        memset(frames[index], 0x3c, 256);
    }
    qsort(frames, FRAMES, sizeof frames[0], compare_pointers);
    for (unsigned index = 1; index < FRAMES; index++)
        cr_assert_geq((uintptr_t)frames[index], (uintptr_t)frames[index - 1] + 256, "frames %p and %p overlap",
                      frames[index - 1], frames[index]);
    check_self(&reuser, "with a reused arena");
    for (unsigned index = 0; index < FRAMES; index++)
        instance_free(&reuser, frames[index]);
    instance_delete(&reuser);
    instance_delete(&other);
    cr_assert_eq(ks_jemalloc_idle_trim(), 2);
}

/* At most JEMALLOC_IDLE_ARENAS arenas are parked; the others are destroyed at DeleteAllocator. */
Test(jemalloc, at_most_the_cap_of_arenas_is_parked)
{
    subject subj = builtin_subject("jemalloc");
    ks_jemalloc_idle_trim();
    KSALLOCATOR_FRAMING framing = ks_test_framing(0, 4096, 63, false);
    enum { OPEN = JEMALLOC_IDLE_ARENAS + 4 };
    instance insts[OPEN];
    unsigned arenas[OPEN];
    for (unsigned index = 0; index < OPEN; index++) {
        instance_open_ok(&insts[index], &subj, &framing, NULL, index);
        arenas[index] = (unsigned)counter_value(&insts[index], "arena");
        cr_assert_not_null(instance_allocate(&insts[index]));
    }
    cr_assert_eq(ks_jemalloc_idle_trim(), 0, "open instances' arenas are not idle");
    for (unsigned index = 0; index < OPEN; index++)
        instance_delete(&insts[index]);
    unsigned existing = 0;
    for (unsigned index = 0; index < OPEN; index++)
        if (jemalloc_arena_exists(arenas[index])) {
            expect_parked_and_empty(arenas[index], "one of many");
            existing++;
        }
    cr_assert_eq(existing, JEMALLOC_IDLE_ARENAS, "%u arenas of %u deleted instances still exist", existing, OPEN);
    cr_assert_eq(ks_jemalloc_idle_trim(), JEMALLOC_IDLE_ARENAS);
    for (unsigned index = 0; index < OPEN; index++)
        cr_assert_not(jemalloc_arena_exists(arenas[index]), "arena %u survived the trim", arenas[index]);
}

/* An arena whose instance had more than JEMALLOC_IDLE_ARENA_MAX_BYTES live is purged before it is
 * parked; a smaller one keeps its pages for the next instance. */
Test(jemalloc, a_parked_arena_keeps_its_pages_up_to_the_byte_cap)
{
    subject subj = builtin_subject("jemalloc");
    ks_jemalloc_idle_trim();
    const size_t big_frame_bytes = 4u << 20, small_frame_bytes = 64u << 10;
    KSALLOCATOR_FRAMING big = ks_test_framing(0, (ULONG)big_frame_bytes, 4095, false);
    KSALLOCATOR_FRAMING small = ks_test_framing(0, (ULONG)small_frame_bytes, 4095, false);
    instance big_inst, small_inst;
    instance_open_ok(&big_inst, &subj, &big, NULL, 0);
    instance_open_ok(&small_inst, &subj, &small, NULL, 1);
    unsigned big_arena = (unsigned)counter_value(&big_inst, "arena");
    unsigned small_arena = (unsigned)counter_value(&small_inst, "arena");
    size_t big_frames = JEMALLOC_IDLE_ARENA_MAX_BYTES / big_frame_bytes + 1; /* just over the cap */
    for (size_t index = 0; index < big_frames; index++)
        memset(instance_allocate(&big_inst), 0x11, big_frame_bytes);
    for (size_t index = 0; index < 8; index++) /* 512 KiB, well under */
        memset(instance_allocate(&small_inst), 0x22, small_frame_bytes);
    instance_delete(&big_inst);
    instance_delete(&small_inst);
    expect_parked_and_empty(big_arena, "over the byte cap");
    expect_parked_and_empty(small_arena, "under the byte cap");
    cr_assert_eq(jemalloc_arena_stat_now(big_arena, "pdirty"), 0, "arena %u kept %zu dirty pages over the cap",
                 big_arena, jemalloc_arena_stat_now(big_arena, "pdirty"));
    cr_assert_eq(jemalloc_arena_stat_now(big_arena, "pmuzzy"), 0);
    size_t page_bytes = 0, page_value_bytes = sizeof page_bytes;
    cr_assert_eq(mallctl("arenas.page", &page_bytes, &page_value_bytes, NULL, 0), 0);
    cr_assert_geq(jemalloc_arena_stat_now(small_arena, "pdirty") * page_bytes, 8 * small_frame_bytes,
                  "arena %u gave back the pages the next instance would reuse", small_arena);
    cr_assert_eq(ks_jemalloc_idle_trim(), 2);
}

/* A private instance's self_check reads its arena's live page count (no longer an epoch
 * snapshot): frames freed behind the instance's back leave fewer active pages than live frames. */
Test(jemalloc, self_check_sees_frames_freed_behind_the_instance)
{
    subject subj = builtin_subject("jemalloc");
    KSALLOCATOR_FRAMING framing = ks_test_framing(0, 65536, 63, false);
    instance inst;
    instance_open_ok(&inst, &subj, &framing, NULL, 0);
    void *frames[4];
    for (unsigned index = 0; index < 4; index++)
        cr_assert_not_null(frames[index] = instance_allocate(&inst));
    check_self(&inst, "with four frames live");
    for (unsigned index = 0; index < 4; index++) /* large frames: straight back to the arena */
        dallocx(frames[index], MALLOCX_TCACHE_NONE);
    expect_self_check_failure(&inst, "fewer than 4 live frames", "four frames freed behind the instance");
    instance_delete(&inst);
}

/* Instances opened and deleted on two threads at once: every open instance has an arena no other
 * open instance holds (arena_holders counts the open holders of each arena index). The threads
 * record their first failure, which the main thread reports (Criterion asserts only there). */
enum { JEMALLOC_RACE_ROUNDS = 300, JEMALLOC_MAX_ARENA_INDEX = 4096 };
static atomic_uint arena_holders[JEMALLOC_MAX_ARENA_INDEX];

typedef struct jemalloc_race {
    const subject *subj;
    char failure[256];
} jemalloc_race;

static unsigned jemalloc_arena_counter(const instance *inst)
{
    ks_counter counters[MAX_COUNTERS];
    size_t count = inst->subj->entry->counters(inst->context, counters, MAX_COUNTERS);
    for (size_t index = 0; index < count; index++)
        if (strcmp(counters[index].name, "arena") == 0)
            return (unsigned)counters[index].value;
    return UINT32_MAX;
}

static void *jemalloc_open_delete_loop(void *arg)
{
    jemalloc_race *race = arg;
    KSALLOCATOR_FRAMING framing = ks_test_framing(0, 512, 63, false);
    for (unsigned round = 0; round < JEMALLOC_RACE_ROUNDS && race->failure[0] == '\0'; round++) {
        instance inst;
        NTSTATUS status = instance_open(&inst, race->subj, &framing, NULL, round % 4);
        if (status != STATUS_SUCCESS) {
            snprintf(race->failure, sizeof race->failure, "InitializeAllocator: %s", ks_status_name(status));
            break;
        }
        unsigned arena = jemalloc_arena_counter(&inst);
        unsigned holders = arena < JEMALLOC_MAX_ARENA_INDEX ? atomic_fetch_add(&arena_holders[arena], 1) + 1 : 0;
        void *frame = instance_allocate(&inst);
        unsigned owner = UINT32_MAX;
        size_t owner_bytes = sizeof owner;
        if (holders != 1)
            snprintf(race->failure, sizeof race->failure, "arena %u is held by %u open instances", arena, holders);
        else if (frame == NULL || mallctl("arenas.lookup", &owner, &owner_bytes, &frame, sizeof frame) != 0 ||
                 owner != arena)
            snprintf(race->failure, sizeof race->failure, "frame %p of arena %u, not %u", frame, owner, arena);
        else
            memset(frame, 0x6b, 512);
        if (holders != 0)
            atomic_fetch_sub(&arena_holders[arena], 1);
        instance_delete(&inst); /* with the frame live */
    }
    return NULL;
}

Test(jemalloc, instances_on_two_threads_never_share_an_arena)
{
    subject subj = builtin_subject("jemalloc");
    ks_jemalloc_idle_trim();
    jemalloc_race races[2] = {{.subj = &subj}, {.subj = &subj}};
    pthread_t threads[2];
    for (unsigned index = 0; index < 2; index++)
        cr_assert_eq(pthread_create(&threads[index], NULL, jemalloc_open_delete_loop, &races[index]), 0);
    for (unsigned index = 0; index < 2; index++)
        cr_assert_eq(pthread_join(threads[index], NULL), 0);
    for (unsigned index = 0; index < 2; index++)
        cr_assert_eq(races[index].failure[0], '\0', "thread %u: %s", index, races[index].failure);
    unsigned parked = ks_jemalloc_idle_trim();
    cr_assert(parked >= 1 && parked <= 2, "%u arenas parked by two threads", parked);
}

Test(jemalloc, shared_heap_instances_share_one_arena_until_the_last_leaves)
{
    subject subj = builtin_subject("jemalloc");
    ks_jemalloc_idle_trim();
    ks_heap *heap = NULL;
    ks_error err;
    ks_error_clear(&err);
    cr_assert_eq(ks_heap_create("jemalloc-shared", 1u << 20, &heap, &err), STATUS_SUCCESS, "%s", err.message);
    KSALLOCATOR_FRAMING small = ks_test_framing(0, 256, 15, false), large = ks_test_framing(0, 65536, 4095, false);
    instance first, second;
    instance_open_ok(&first, &subj, &small, heap, 0);
    instance_open_ok(&second, &subj, &large, heap, 1);
    cr_assert_eq(counter_value(&first, "arena"), counter_value(&second, "arena"), "pins on one heap, two arenas");
    unsigned arena = (unsigned)counter_value(&first, "arena");
    cr_assert_str_eq(ks_heap_family(heap), "jemalloc");
    void *a = instance_allocate(&first), *b = instance_allocate(&second);
    cr_assert_eq(jemalloc_arena_of(a), jemalloc_arena_of(b));
    instance_delete(&first); /* with a live: freed one by one, the arena stays for the second pin */
    cr_assert_str_eq(ks_heap_family(heap), "jemalloc", "the arena went with the first pin");
    memset(b, 0x77, 65536); /* still usable */
    cr_assert_eq(ks_jemalloc_idle_trim(), 0, "the shared arena is not idle while a pin uses it");
    instance_delete(&second); /* with b live */
    cr_assert_null(ks_heap_family(heap), "the last pin left but the heap is still attached");
    expect_parked_and_empty(arena, "the shared heap's arena after the last pin");
    cr_assert_eq(ks_heap_destroy(heap, &err), STATUS_SUCCESS, "%s", err.message);
    instance next;
    instance_open_ok(&next, &subj, &small, NULL, 0);
    cr_assert_eq(counter_value(&next, "arena"), arena, "the shared heap's parked arena was not reused");
    instance_delete(&next);
}

Test(jemalloc, free_of_a_frame_not_live_is_reported_on_a_shared_heap)
{
    subject subj = builtin_subject("jemalloc");
    ks_heap *heap = NULL;
    ks_error err;
    ks_error_clear(&err);
    cr_assert_eq(ks_heap_create("jemalloc-bad-free", 1u << 20, &heap, &err), STATUS_SUCCESS, "%s", err.message);
    KSALLOCATOR_FRAMING framing = ks_test_framing(0, 256, 15, false);
    instance inst;
    instance_open_ok(&inst, &subj, &framing, heap, 0);
    void *frame = instance_allocate(&inst);
    check_self(&inst, "with one frame live");
    instance_free(&inst, frame);
    instance_free(&inst, frame);
    cr_assert_eq(counter_value(&inst, "bad_frees"), 1);
    expect_self_check_failure(&inst, "not live", "a double free on a shared heap");
    instance_delete(&inst);
    cr_assert_eq(ks_heap_destroy(heap, &err), STATUS_SUCCESS, "%s", err.message);
}

/* ---- Peers: one thread-safe instance, two threads, then DeleteAllocator --------------------------- *
 * Two threads hammer one instance of a general-purpose peer and trade frames through a shared
 * exchange (each frees frames the other allocated), checking a stamp at both ends of every frame
 * before freeing it. At the end the exchange and each thread still hold frames that neither
 * freed; the instance's frames_live counter must count them, and after DeleteAllocator the
 * library's own figures must show them gone: glibc's bytes in use (the sanitizer heap's in ASan
 * builds), tcmalloc's current_allocated_bytes, the jemalloc instance's arena parked empty, and,
 * for mimalloc, whose frames sit in the two threads' own heaps, the frame-sized blocks each
 * thread's heap still holds, counted by that thread while it is still alive. */

#define PEER_FRAME_BYTES 4096u
#define PEER_EXCHANGE_SLOTS 32u
#define PEER_OPS 60000u
#define PEER_KEPT 8u /* frames each thread keeps to the end */
#define PEER_STAMP UINT64_C(0x5EE12BADC0FFEE00)

typedef enum peer_probe {
    PEER_PROBE_GLIBC,            /* glibc's (or the sanitizer's) heap, in bytes */
    PEER_PROBE_TCMALLOC,         /* tcmalloc's allocated bytes */
    PEER_PROBE_JEMALLOC_ARENA,   /* the instance's private arena, parked empty after the delete */
    PEER_PROBE_MIMALLOC_THREADS, /* frame-sized blocks in each thread's default heap */
} peer_probe;

typedef struct peer_run {
    instance *inst;
    _Atomic(void *) *exchange;
    pthread_barrier_t *phase; /* start; all frames placed; deleted; counted */
    peer_probe probe;
    uint64_t seed;
    void *kept[PEER_KEPT];
    size_t heap_blocks_before; /* mimalloc: before and after the delete, counted by this thread */
    size_t heap_blocks_after;
    char failure[256];
} peer_run;

static void peer_stamp(void *frame)
{
    uint64_t stamp = (uint64_t)(uintptr_t)frame ^ PEER_STAMP;
    memcpy(frame, &stamp, sizeof stamp);
    memcpy((char *)frame + PEER_FRAME_BYTES - sizeof stamp, &stamp, sizeof stamp);
}

static bool peer_stamp_intact(const void *frame)
{
    uint64_t head, tail, stamp = (uint64_t)(uintptr_t)frame ^ PEER_STAMP;
    memcpy(&head, frame, sizeof head);
    memcpy(&tail, (const char *)frame + PEER_FRAME_BYTES - sizeof tail, sizeof tail);
    return head == stamp && tail == stamp;
}

static bool count_frame_block(const mi_heap_t *heap, const mi_heap_area_t *area, void *block, size_t block_bytes,
                              void *arg)
{
    (void)heap;
    (void)area;
    if (block != NULL && block_bytes >= PEER_FRAME_BYTES)
        (*(size_t *)arg)++;
    return true;
}

/* Frame-sized blocks live in the calling thread's default mimalloc heap, once the frees other
 * threads made into it have landed. */
static size_t mimalloc_thread_frame_blocks(void)
{
    mi_heap_t *heap = mi_heap_get_default();
    mi_heap_collect(heap, false);
    size_t blocks = 0;
    mi_heap_visit_blocks(heap, true, count_frame_block, &blocks);
    return blocks;
}

static void *peer_thread(void *arg)
{
    peer_run *run = arg;
    uint64_t state = run->seed;
    pthread_barrier_wait(run->phase);
    for (unsigned op = 0; op < PEER_OPS && run->failure[0] == '\0'; op++) {
        void *frame = instance_allocate(run->inst);
        if (frame == NULL) {
            snprintf(run->failure, sizeof run->failure, "op %u: Allocate returned NULL", op);
            break;
        }
        peer_stamp(frame);
        size_t slot = (size_t)(next_random(&state) >> 40) % PEER_EXCHANGE_SLOTS;
        void *previous = atomic_exchange(&run->exchange[slot], frame);
        if (previous == NULL)
            continue;
        if (!peer_stamp_intact(previous))
            snprintf(run->failure, sizeof run->failure, "op %u: frame %p was written while it was live", op,
                     previous);
        instance_free(run->inst, previous);
    }
    for (size_t index = 0; index < PEER_KEPT && run->failure[0] == '\0'; index++) {
        run->kept[index] = instance_allocate(run->inst);
        if (run->kept[index] == NULL)
            snprintf(run->failure, sizeof run->failure, "kept frame %zu: Allocate returned NULL", index);
        else
            peer_stamp(run->kept[index]);
    }
    if (run->probe == PEER_PROBE_MIMALLOC_THREADS)
        run->heap_blocks_before = mimalloc_thread_frame_blocks();
    pthread_barrier_wait(run->phase); /* every frame placed; the main thread deletes the instance */
    pthread_barrier_wait(run->phase);
    if (run->probe == PEER_PROBE_MIMALLOC_THREADS)
        run->heap_blocks_after = mimalloc_thread_frame_blocks();
    pthread_barrier_wait(run->phase);
    return NULL;
}

/* Bytes the peer's library says are in use now (the probes that count bytes). */
static uint64_t peer_bytes_in_use(peer_probe probe)
{
    if (probe == PEER_PROBE_TCMALLOC) {
        size_t allocated_bytes = 0;
        cr_assert(MallocExtension_GetNumericProperty("generic.current_allocated_bytes", &allocated_bytes));
        return allocated_bytes;
    }
#if SANITIZER_HEAP
    return __sanitizer_get_current_allocated_bytes();
#else
    struct mallinfo2 info = mallinfo2();
    return info.uordblks + info.hblkhd;
#endif
}

static void peer_two_threads_then_delete(const char *name, peer_probe probe)
{
    subject subj = builtin_subject(name);
    cr_assert(has_cap(&subj, KS_CAP_THREAD_SAFE), "%s does not claim KS_CAP_THREAD_SAFE", name);
    ks_jemalloc_idle_trim();
    KSALLOCATOR_FRAMING framing = ks_test_framing(0, PEER_FRAME_BYTES, 63, false);
    instance inst;
    instance_open_ok(&inst, &subj, &framing, NULL, 0);
    _Atomic(void *) exchange[PEER_EXCHANGE_SLOTS];
    for (size_t slot = 0; slot < PEER_EXCHANGE_SLOTS; slot++)
        atomic_init(&exchange[slot], NULL);
    pthread_barrier_t phase;
    cr_assert_eq(pthread_barrier_init(&phase, NULL, 3), 0);
    peer_run runs[2];
    pthread_t threads[2];
    for (unsigned t = 0; t < 2; t++) {
        runs[t] = (peer_run){.inst = &inst, .exchange = exchange, .phase = &phase, .probe = probe,
                             .seed = 0xC0FFEE11u + 7919u * t};
        cr_assert_eq(pthread_create(&threads[t], NULL, peer_thread, &runs[t]), 0);
    }
    pthread_barrier_wait(&phase); /* go */
    pthread_barrier_wait(&phase); /* every frame placed */
    size_t frames_live = 2 * PEER_KEPT;
    for (size_t slot = 0; slot < PEER_EXCHANGE_SLOTS; slot++) {
        void *frame = atomic_load(&exchange[slot]);
        if (frame != NULL) {
            frames_live++;
            cr_assert(peer_stamp_intact(frame), "%s: frame %p in the exchange was overwritten", inst.label, frame);
        }
    }
    for (unsigned t = 0; t < 2; t++)
        cr_assert_eq(runs[t].failure[0], '\0', "%s: thread %u: %s", inst.label, t, runs[t].failure);
    check_counters(&inst, frames_live);
    check_self(&inst, "with frames of two threads live");
    unsigned arena = probe == PEER_PROBE_JEMALLOC_ARENA ? (unsigned)counter_value(&inst, "arena") : 0;
    uint64_t before_bytes = probe == PEER_PROBE_GLIBC || probe == PEER_PROBE_TCMALLOC ? peer_bytes_in_use(probe) : 0;
    instance_delete(&inst); /* neither thread freed the exchange's frames nor its kept ones */
    uint64_t after_bytes = probe == PEER_PROBE_GLIBC || probe == PEER_PROBE_TCMALLOC ? peer_bytes_in_use(probe) : 0;
    pthread_barrier_wait(&phase); /* deleted: the threads count what their heaps still hold */
    pthread_barrier_wait(&phase);
    for (unsigned t = 0; t < 2; t++)
        cr_assert_eq(pthread_join(threads[t], NULL), 0);
    pthread_barrier_destroy(&phase);
    switch (probe) {
    case PEER_PROBE_GLIBC:
    case PEER_PROBE_TCMALLOC:
        cr_assert_geq(before_bytes - after_bytes, frames_live * (uint64_t)PEER_FRAME_BYTES,
                      "%s: DeleteAllocator gave back %llu bytes for %zu live frames of %u bytes", name,
                      (unsigned long long)(before_bytes - after_bytes), frames_live, PEER_FRAME_BYTES);
        break;
    case PEER_PROBE_JEMALLOC_ARENA:
        expect_parked_and_empty(arena, "after two threads and a delete with frames live");
        ks_jemalloc_idle_trim();
        break;
    case PEER_PROBE_MIMALLOC_THREADS:
        cr_assert_geq(runs[0].heap_blocks_before + runs[1].heap_blocks_before, frames_live,
                      "%s: the test's own control: the threads' heaps hold %zu frame blocks for %zu live frames",
                      name, runs[0].heap_blocks_before + runs[1].heap_blocks_before, frames_live);
        for (unsigned t = 0; t < 2; t++)
            cr_assert_eq(runs[t].heap_blocks_after, 0, "%s: thread %u's heap still holds %zu frame blocks", name, t,
                         runs[t].heap_blocks_after);
        break;
    }
}

Test(peers, system_two_threads_on_one_instance_then_delete_releases_what_neither_freed)
{
    peer_two_threads_then_delete("system", PEER_PROBE_GLIBC);
}

Test(peers, jemalloc_two_threads_on_one_instance_then_delete_releases_what_neither_freed)
{
    peer_two_threads_then_delete("jemalloc", PEER_PROBE_JEMALLOC_ARENA);
}

Test(peers, mimalloc_two_threads_on_one_instance_then_delete_releases_what_neither_freed)
{
    peer_two_threads_then_delete("mimalloc", PEER_PROBE_MIMALLOC_THREADS);
}

Test(peers, tcmalloc_two_threads_on_one_instance_then_delete_releases_what_neither_freed)
{
    peer_two_threads_then_delete("tcmalloc", PEER_PROBE_TCMALLOC);
}
