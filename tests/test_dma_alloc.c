/*
 * test_dma_alloc.c -- the DMA-backed allocators (dma_common, dma_sg, dma_pool) against emulated
 * devices: no adapter is an error; every frame is aligned, distinct and reachable by the device
 * (its segments within the mask, the boundary, the segment length and count, and the device
 * really moves the data: capture, render and loopback on every frame); capacity as promised;
 * stale data on non-coherent streaming frames without syncs; double and foreign frees ignored;
 * DeleteAllocator releases every mapping and page even with frames live; the verifier finds
 * nothing wrong over a random sequence; concurrent use from two threads.
 */
#include <criterion/criterion.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "test_dma_helpers.h"
#include "verifier.h"

extern const ks_allocator_entry ks_allocator_dma_common;
extern const ks_allocator_entry ks_allocator_dma_sg;
extern const ks_allocator_entry ks_allocator_dma_pool;

static const ks_allocator_entry *const dma_entries[] = {&ks_allocator_dma_common, &ks_allocator_dma_sg,
                                                        &ks_allocator_dma_pool};

static KSPIN make_pin(ks_dma_adapter *adapter, const KSALLOCATOR_FRAMING *framing)
{
    KSPIN pin = {.abi_version = KSALLOC_ABI_VERSION, .name = "pin0", .framing = *framing, .dma_adapter = adapter};
    return pin;
}

static KSALLOCATOR_FRAMING framing_of(ULONG frames, ULONG frame_bytes, ULONG align_mask)
{
    KSALLOCATOR_FRAMING framing = {.PoolType = NonPagedPool, .Frames = frames, .FrameSize = frame_bytes};
    framing.FileAlignment = align_mask;
    return framing;
}

static void *open_allocator(const ks_allocator_entry *entry, ks_dma_adapter *adapter, KSALLOCATOR_FRAMING *framing)
{
    KSPIN pin = make_pin(adapter, framing);
    void *context = NULL;
    NTSTATUS status = entry->dispatch->InitializeAllocator(&pin, framing, &context);
    cr_assert_eq(status, STATUS_SUCCESS, "%s: InitializeAllocator gave %s", entry->name, ks_status_name(status));
    cr_assert_not_null(context);
    return context;
}

static uint64_t counter(const ks_allocator_entry *entry, void *context, const char *name)
{
    ks_counter counters[16];
    size_t count = entry->counters(context, counters, 16);
    for (size_t i = 0; i < count; i++)
        if (strcmp(counters[i].name, name) == 0)
            return counters[i].value;
    cr_assert_fail("%s has no counter %s", entry->name, name);
    return 0;
}

/* Every segment of the frame obeys the device, and the device moves data in and out of it. */
static void check_frame_reachable(ks_dma_device *device, const char *spec, void *frame, size_t frame_bytes,
                                  void *other_frame, uint64_t seed)
{
    ks_dma_adapter *adapter = ks_dma_device_adapter(device);
    const ks_dma_device_description *desc = ks_dma_adapter_description(adapter);
    ks_dma_segment segments[64];
    ks_dma_frame_info info;
    ks_error err;
    cr_assert_eq(ks_dma_frame_lookup(adapter, frame, &info, segments, 64, &err), STATUS_SUCCESS, "%s: %s", spec,
                 err.message);
    cr_assert_geq(info.bytes, frame_bytes);
    cr_assert_leq(info.segment_count, 64);
    cr_assert(desc->scatter_gather || info.segment_count == 1, "%s: %u segments without sg", spec, info.segment_count);
    cr_assert(desc->max_segments == 0 || info.segment_count <= desc->max_segments, "%s", spec);
    uint64_t mask = info.kind == KS_DMA_KIND_COHERENT ? ks_dma_adapter_coherent_mask(adapter) : ks_dma_adapter_mask(adapter);
    uint64_t total = 0;
    for (uint32_t i = 0; i < info.segment_count; i++) {
        ks_dma_addr first = segments[i].bus_addr, last = first + segments[i].bytes - 1u;
        cr_assert_leq(last, mask, "%s: segment %u ends at 0x%llx beyond the mask", spec, i, (unsigned long long)last);
        cr_assert(desc->boundary_bytes == 0 || (first ^ last) < desc->boundary_bytes, "%s: segment %u crosses", spec, i);
        cr_assert(desc->max_segment_bytes == 0 || segments[i].bytes <= desc->max_segment_bytes, "%s", spec);
        cr_assert_eq(first % desc->align_bytes, 0, "%s: segment %u misaligned", spec, i);
        total += segments[i].bytes;
    }
    cr_assert_eq(total, info.bytes, "%s: the segments cover the frame", spec);
    if (!ks_dma_adapter_has_iommu(adapter) && info.segment_count == 1) {
        uint64_t phys;
        cr_assert(ks_dma_adapter_phys_of(adapter, frame, &phys));
        cr_assert_eq(phys, info.bus_addr, "%s: without an IOMMU the device address is the physical one", spec);
    }
    ks_dma_transfer_result result;
    for (ks_dma_transfer transfer = KS_DMA_TRANSFER_CAPTURE; transfer <= KS_DMA_TRANSFER_LOOPBACK; transfer++) {
        if (transfer == KS_DMA_TRANSFER_LOOPBACK && other_frame == NULL)
            continue;
        cr_assert_eq(ks_dma_frame_transfer(device, transfer, frame, other_frame, seed + transfer, 0, &result, &err),
                     STATUS_SUCCESS, "%s %s: %s", spec, ks_dma_transfer_name(transfer), err.message);
        cr_assert(result.data_ok);
    }
}

/* Opens the allocator on a device, takes every frame, checks each, frees, deletes, and checks
 * the adapter holds nothing and the checker saw nothing. */
static void exercise(const ks_allocator_entry *entry, const char *spec, KSALLOCATOR_FRAMING framing)
{
    ks_dma_device *device = test_device(spec);
    ks_dma_adapter *adapter = ks_dma_device_adapter(device);
    void *context = open_allocator(entry, adapter, &framing);
    enum { MAX_TAKEN = 64 };
    void *frames[MAX_TAKEN];
    cr_assert_leq(framing.Frames, MAX_TAKEN);
    size_t align = ks_framing_align_bytes(&framing);
    for (ULONG i = 0; i < framing.Frames; i++) {
        frames[i] = entry->dispatch->Allocate(context);
        cr_assert_not_null(frames[i], "%s %s: frame %u of %u", entry->name, spec, i, framing.Frames);
        cr_assert_eq((uintptr_t)frames[i] % align, 0, "%s %s: frame %u misaligned", entry->name, spec, i);
        memset(frames[i], (int)i, framing.FrameSize);
        for (ULONG j = 0; j < i; j++)
            cr_assert((uintptr_t)frames[j] + framing.FrameSize <= (uintptr_t)frames[i] ||
                          (uintptr_t)frames[i] + framing.FrameSize <= (uintptr_t)frames[j],
                      "%s %s: frames %u and %u overlap", entry->name, spec, j, i);
    }
    if ((entry->caps & KS_CAP_BOUNDED) != 0)
        cr_assert_null(entry->dispatch->Allocate(context), "%s %s: frame Frames + 1", entry->name, spec);
    for (ULONG i = 0; i < framing.Frames; i++)
        check_frame_reachable(device, spec, frames[i], framing.FrameSize, frames[(i + 1u) % framing.Frames], 100u + i);
    char why[256];
    cr_assert_eq(entry->self_check(context, why, sizeof why), STATUS_SUCCESS, "%s %s: %s", entry->name, spec, why);
    cr_assert_eq(counter(entry, context, "frames_live"), framing.Frames);
    for (ULONG i = 0; i < framing.Frames; i += 2)
        entry->dispatch->Free(context, frames[i]);
    entry->dispatch->DeleteAllocator(context); /* odd frames still live */
    ks_dma_adapter_stats stats;
    ks_dma_adapter_get_stats(adapter, &stats);
    cr_assert_eq(stats.live_mappings, 0, "%s %s: delete leaves %llu mappings", entry->name, spec,
                 (unsigned long long)stats.live_mappings);
    cr_assert_eq(stats.phys_pages_live, 0, "%s %s: delete leaves %llu pages", entry->name, spec,
                 (unsigned long long)stats.phys_pages_live);
    ks_dma_device_stop(device);
    test_expect_rules(adapter, 0, spec);
    ks_dma_device_destroy(device);
}

static const char *const coherent_buffer_devices[] = {
    "mask=32,high=100",
    "mask=32,high=100,coherent=0",
    "mask=32,high=100,iommu=1,coherent=0",
    "mask=24,high_boundary=16M,high=100",
    "mask=32,boundary=8K,align=64,high=50",
    "mask=64,sg=1,boundary=4K,max_seg=2K,max_segs=4,coherent=0",
};

static const char *const streaming_devices[] = {
    "mask=32,sg=1,high=100",
    "mask=32,sg=1,high=100,coherent=0",
    "mask=32,high=100,iommu=1",
    "mask=32,sg=1,high=100,iommu=1,coherent=0,max_seg=8K",
    "mask=24,sg=1,high_boundary=16M,high=100,coherent=0",
    "mask=64,sg=1,boundary=4K,max_seg=2K,max_segs=8,align=64",
};

Test(dma_alloc, no_adapter_is_invalid_parameter)
{
    for (size_t i = 0; i < sizeof dma_entries / sizeof dma_entries[0]; i++) {
        KSALLOCATOR_FRAMING framing = framing_of(4, 4096, 0);
        KSPIN pin = make_pin(NULL, &framing);
        void *context = (void *)1;
        cr_assert_eq(dma_entries[i]->dispatch->InitializeAllocator(&pin, &framing, &context), STATUS_INVALID_PARAMETER,
                     "%s", dma_entries[i]->name);
        cr_assert_null(context);
        cr_assert_neq(dma_entries[i]->caps & KS_CAP_DMA, 0);
    }
}

Test(dma_alloc, refusals)
{
    ks_dma_adapter *adapter = test_adapter("mask=32");
    for (size_t i = 0; i < sizeof dma_entries / sizeof dma_entries[0]; i++) {
        KSALLOCATOR_FRAMING paged = framing_of(4, 4096, 0);
        paged.PoolType = PagedPool;
        KSPIN pin = make_pin(adapter, &paged);
        void *context;
        cr_assert_eq(dma_entries[i]->dispatch->InitializeAllocator(&pin, &paged, &context), STATUS_INVALID_PARAMETER,
                     "%s serves paged pool", dma_entries[i]->name);
        KSALLOCATOR_FRAMING crooked = framing_of(4, 4096, 6);
        cr_assert_eq(dma_entries[i]->dispatch->InitializeAllocator(&pin, &crooked, &context), STATUS_INVALID_PARAMETER,
                     "%s takes alignment mask 6", dma_entries[i]->name);
    }
    KSALLOCATOR_FRAMING two_pages = framing_of(4, 8192, 0);
    KSPIN pin = make_pin(adapter, &two_pages);
    void *context;
    cr_assert_eq(ks_allocator_dma_sg.dispatch->InitializeAllocator(&pin, &two_pages, &context), STATUS_NOT_SUPPORTED,
                 "two scattered pages on a device with neither sg nor IOMMU");
    ks_dma_adapter_destroy(adapter);

    adapter = test_adapter("mask=32,sg=1,max_segs=2");
    KSALLOCATOR_FRAMING four_pages = framing_of(4, 4 * 4096, 0);
    pin = make_pin(adapter, &four_pages);
    cr_assert_eq(ks_allocator_dma_sg.dispatch->InitializeAllocator(&pin, &four_pages, &context), STATUS_NOT_SUPPORTED,
                 "four segments on a device that takes two");
    ks_dma_adapter_destroy(adapter);

    adapter = test_adapter("mask=32,boundary=4K");
    KSALLOCATOR_FRAMING long_frames = framing_of(4, 6000, 0);
    pin = make_pin(adapter, &long_frames);
    cr_assert_eq(ks_allocator_dma_common.dispatch->InitializeAllocator(&pin, &long_frames, &context),
                 STATUS_INVALID_PARAMETER, "a frame longer than the boundary on a device without sg");
    cr_assert_eq(ks_allocator_dma_pool.dispatch->InitializeAllocator(&pin, &long_frames, &context),
                 STATUS_INVALID_PARAMETER, "a pool block longer than the boundary");
    ks_dma_adapter_check_leaks(adapter);
    test_expect_rules(adapter, 0, "refused initialisations leave nothing behind");
    ks_dma_adapter_destroy(adapter);
}

Test(dma_alloc, dma_common_frames_reachable, .timeout = 60)
{
    for (size_t i = 0; i < sizeof coherent_buffer_devices / sizeof coherent_buffer_devices[0]; i++)
        exercise(&ks_allocator_dma_common, coherent_buffer_devices[i], framing_of(12, 6000, FILE_256_BYTE_ALIGNMENT));
}

Test(dma_alloc, dma_sg_frames_reachable, .timeout = 60)
{
    for (size_t i = 0; i < sizeof streaming_devices / sizeof streaming_devices[0]; i++)
        exercise(&ks_allocator_dma_sg, streaming_devices[i], framing_of(10, 3 * 4096 + 100, FILE_64_BYTE_ALIGNMENT));
}

Test(dma_alloc, dma_pool_frames_reachable, .timeout = 60)
{
    for (size_t i = 0; i < sizeof coherent_buffer_devices / sizeof coherent_buffer_devices[0]; i++)
        exercise(&ks_allocator_dma_pool, coherent_buffer_devices[i], framing_of(40, 200, FILE_64_BYTE_ALIGNMENT));
}

Test(dma_alloc, dma_common_keeps_frames_inside_the_boundary)
{
    ks_dma_adapter *adapter = test_adapter("mask=32,boundary=16K");
    KSALLOCATOR_FRAMING framing = framing_of(20, 6000, 0);
    void *context = open_allocator(&ks_allocator_dma_common, adapter, &framing);
    for (int i = 0; i < 20; i++) {
        void *frame = ks_allocator_dma_common.dispatch->Allocate(context);
        ks_dma_frame_info info;
        ks_dma_segment segment;
        cr_assert_eq(ks_dma_frame_lookup(adapter, frame, &info, &segment, 1, NULL), STATUS_SUCCESS);
        cr_assert_eq(info.segment_count, 1);
        cr_assert_eq(segment.bus_addr / 16384, (segment.bus_addr + 5999) / 16384, "frame %d crosses 16 KiB", i);
    }
    cr_assert_geq(counter(&ks_allocator_dma_common, context, "reserved_bytes"), 20 * 6000);
    ks_allocator_dma_common.dispatch->DeleteAllocator(context);
    ks_dma_adapter_check_leaks(adapter);
    test_expect_rules(adapter, 0, "dma_common within a boundary");
    ks_dma_adapter_destroy(adapter);
}

Test(dma_alloc, dma_sg_frames_are_scattered_without_iommu_and_merged_with)
{
    ks_dma_adapter *plain = test_adapter("mask=32,sg=1,high=50"), *translated = test_adapter("mask=32,iommu=1,high=50");
    KSALLOCATOR_FRAMING framing = framing_of(4, 8 * 4096, 0);
    void *plain_context = open_allocator(&ks_allocator_dma_sg, plain, &framing);
    void *translated_context = open_allocator(&ks_allocator_dma_sg, translated, &framing);
    ks_dma_frame_info info;
    ks_dma_segment segments[8];
    cr_assert_eq(ks_dma_frame_lookup(plain, ks_allocator_dma_sg.dispatch->Allocate(plain_context), &info, segments, 8,
                                     NULL),
                 STATUS_SUCCESS);
    cr_assert_eq(info.segment_count, 8, "eight scattered pages, eight segments");
    cr_assert_eq(info.kind, KS_DMA_KIND_SG);
    cr_assert(!info.needs_sync, "a coherent device needs no sync");
    cr_assert_eq(ks_dma_frame_lookup(translated, ks_allocator_dma_sg.dispatch->Allocate(translated_context), &info,
                                     segments, 8, NULL),
                 STATUS_SUCCESS);
    cr_assert_eq(info.segment_count, 1, "the IOMMU makes them one");
    ks_allocator_dma_sg.dispatch->DeleteAllocator(plain_context);
    ks_allocator_dma_sg.dispatch->DeleteAllocator(translated_context);
    ks_dma_adapter_destroy(plain);
    ks_dma_adapter_destroy(translated);
}

Test(dma_alloc, dma_sg_on_a_non_coherent_device_needs_its_syncs)
{
    ks_dma_device *device = test_device("mask=32,sg=1,coherent=0");
    ks_dma_adapter *adapter = ks_dma_device_adapter(device);
    KSALLOCATOR_FRAMING framing = framing_of(2, 2 * 4096, 0);
    void *context = open_allocator(&ks_allocator_dma_sg, adapter, &framing);
    void *frame = ks_allocator_dma_sg.dispatch->Allocate(context);
    ks_dma_frame_info info;
    cr_assert_eq(ks_dma_frame_lookup(adapter, frame, &info, NULL, 0, NULL), STATUS_SUCCESS);
    cr_assert(info.needs_sync);
    ks_dma_transfer_result result;
    ks_error err;
    cr_assert_eq(ks_dma_frame_transfer(device, KS_DMA_TRANSFER_CAPTURE, frame, NULL, 7, KS_DMA_TRANSFER_NO_SYNC,
                                       &result, &err),
                 STATUS_DATA_ERROR, "a capture read without a sync for CPU sees stale data");
    cr_assert_eq(result.first_bad_offset, 0);
    cr_assert_eq(ks_dma_frame_transfer(device, KS_DMA_TRANSFER_RENDER, frame, NULL, 8, KS_DMA_TRANSFER_NO_SYNC,
                                       &result, &err),
                 STATUS_DATA_ERROR, "a render without a sync for device checksums stale data");
    cr_assert_neq(result.device_checksum, result.expected_checksum);
    cr_assert_eq(ks_dma_frame_transfer(device, KS_DMA_TRANSFER_CAPTURE, frame, NULL, 9, 0, &result, &err),
                 STATUS_SUCCESS, "%s", err.message);
    cr_assert_eq(ks_dma_frame_transfer(device, KS_DMA_TRANSFER_RENDER, frame, NULL, 10, 0, &result, &err),
                 STATUS_SUCCESS, "%s", err.message);
    ks_allocator_dma_sg.dispatch->DeleteAllocator(context);
    ks_dma_device_destroy(device);
}

Test(dma_alloc, dma_pool_grows_and_keeps_blocks_inside_the_boundary)
{
    ks_dma_adapter *adapter = test_adapter("mask=32,boundary=1K");
    KSALLOCATOR_FRAMING framing = framing_of(0, 300, FILE_32_BYTE_ALIGNMENT);
    void *context = open_allocator(&ks_allocator_dma_pool, adapter, &framing);
    uint64_t per_page = counter(&ks_allocator_dma_pool, context, "blocks_per_page");
    cr_assert_eq(framing.Frames, per_page, "Frames 0 is written back as one page's worth");
    cr_assert_eq(per_page, 12, "320-byte blocks, three per KiB: got %llu",
                 (unsigned long long)per_page);
    enum { BLOCKS = 100 };
    void *blocks[BLOCKS];
    for (int i = 0; i < BLOCKS; i++) {
        blocks[i] = ks_allocator_dma_pool.dispatch->Allocate(context);
        cr_assert_not_null(blocks[i]);
        cr_assert_eq((uintptr_t)blocks[i] % 32, 0);
        ks_dma_frame_info info;
        ks_dma_segment segment;
        cr_assert_eq(ks_dma_frame_lookup(adapter, blocks[i], &info, &segment, 1, NULL), STATUS_SUCCESS);
        cr_assert_eq(segment.bus_addr / 1024, (segment.bus_addr + info.bytes - 1) / 1024, "block %d crosses 1 KiB", i);
    }
    cr_assert_eq(counter(&ks_allocator_dma_pool, context, "pages"), (BLOCKS + per_page - 1) / per_page, "grew by pages");
    ks_allocator_dma_pool.dispatch->Free(context, blocks[3]);
    ks_allocator_dma_pool.dispatch->Free(context, blocks[3]);
    ks_allocator_dma_pool.dispatch->Free(context, (char *)blocks[4] + 8);
    cr_assert_eq(counter(&ks_allocator_dma_pool, context, "bad_frees"), 2, "double and interior frees are refused");
    char why[256];
    cr_assert_eq(ks_allocator_dma_pool.dispatch->Allocate(context), blocks[3], "the freed block comes back once");
    cr_assert_eq(ks_allocator_dma_pool.self_check(context, why, sizeof why), STATUS_SUCCESS, "%s", why);
    ks_allocator_dma_pool.dispatch->DeleteAllocator(context);
    ks_dma_adapter_check_leaks(adapter);
    test_expect_rules(adapter, 0, "dma_pool");
    ks_dma_adapter_destroy(adapter);
}

Test(dma_alloc, double_and_foreign_frees_are_ignored)
{
    ks_dma_adapter *adapter = test_adapter("mask=32,sg=1");
    const ks_allocator_entry *bounded[] = {&ks_allocator_dma_common, &ks_allocator_dma_sg};
    for (size_t e = 0; e < 2; e++) {
        KSALLOCATOR_FRAMING framing = framing_of(3, 4096, 0);
        void *context = open_allocator(bounded[e], adapter, &framing);
        void *a = bounded[e]->dispatch->Allocate(context), *b = bounded[e]->dispatch->Allocate(context);
        int foreign;
        bounded[e]->dispatch->Free(context, a);
        bounded[e]->dispatch->Free(context, a);
        bounded[e]->dispatch->Free(context, &foreign);
        bounded[e]->dispatch->Free(context, (char *)b + 64);
        cr_assert_eq(counter(bounded[e], context, "bad_frees"), 3, "%s", bounded[e]->name);
        void *c = bounded[e]->dispatch->Allocate(context), *d = bounded[e]->dispatch->Allocate(context);
        cr_assert_neq(c, d, "%s hands a double-freed frame out once", bounded[e]->name);
        cr_assert_null(bounded[e]->dispatch->Allocate(context), "%s: b, c, d are the three frames", bounded[e]->name);
        char why[256];
        cr_assert_eq(bounded[e]->self_check(context, why, sizeof why), STATUS_SUCCESS, "%s", why);
        bounded[e]->dispatch->DeleteAllocator(context);
    }
    ks_dma_adapter_destroy(adapter);
}

/* ---- through the verifier ---------------------------------------------------------------------- */

static void verify_random_sequence(const ks_allocator_entry *entry, const char *spec, KSALLOCATOR_FRAMING framing)
{
    ks_dma_adapter *adapter = test_adapter(spec);
    ks_verifier *verifier;
    ks_verifier_options options = {.self_check_every_ops = 16};
    ks_error err;
    cr_assert_eq(ks_verifier_create(&options, &verifier, &err), STATUS_SUCCESS, "%s", err.message);
    KSPIN pin = make_pin(adapter, &framing);
    ks_verifier_pin verifier_pin = {.verifier = verifier, .inner = entry, .pin = &pin};
    void *context;
    cr_assert_eq(ks_verifier_dispatch.InitializeAllocator(&verifier_pin, &framing, &context), STATUS_SUCCESS);
    void *live[64];
    unsigned live_count = 0;
    uint64_t state = 1234;
    for (int op = 0; op < 2000; op++) {
        uint64_t draw = state = state * 6364136223846793005ull + 1442695040888963407ull;
        if ((draw >> 33) % 3 != 0 && live_count < 64) {
            void *frame = ks_verifier_dispatch.Allocate(context);
            if (frame != NULL)
                live[live_count++] = frame;
        } else if (live_count > 0) {
            unsigned k = (unsigned)((draw >> 40) % live_count);
            if ((draw >> 20) % 4 == 0) {
                ks_verifier_touch(context, live[k]);
                continue;
            }
            ks_verifier_dispatch.Free(context, live[k]);
            live[k] = live[--live_count];
        }
    }
    ks_verifier_dispatch.DeleteAllocator(context);
    uint64_t faults = ks_verifier_fault_count(verifier);
    const ks_fault *first = ks_verifier_fault_at(verifier, 0);
    cr_assert_leq(faults, live_count, "%s on %s: %s", entry->name, spec, first == NULL ? "" : first->message);
    for (uint64_t i = 0; i < faults; i++)
        cr_assert_eq(ks_verifier_fault_at(verifier, i)->kind, KS_FAULT_LEAK, "%s on %s: %s", entry->name, spec,
                     ks_verifier_fault_at(verifier, i)->message);
    ks_verifier_destroy(verifier);
    ks_dma_adapter_check_leaks(adapter);
    test_expect_rules(adapter, 0, spec);
    ks_dma_adapter_destroy(adapter);
}

Test(dma_alloc, verifier_finds_nothing, .timeout = 60)
{
    verify_random_sequence(&ks_allocator_dma_common, "mask=32,boundary=64K,high=100", framing_of(48, 5000, 127));
    verify_random_sequence(&ks_allocator_dma_sg, "mask=32,sg=1,coherent=0,high=100", framing_of(48, 9000, 63));
    verify_random_sequence(&ks_allocator_dma_sg, "mask=64,iommu=1,high=60", framing_of(16, 65536, 0));
    verify_random_sequence(&ks_allocator_dma_pool, "mask=32,boundary=4K", framing_of(20, 96, 15));
}

/* ---- two threads --------------------------------------------------------------------------------- */

typedef struct churn_args {
    const ks_allocator_entry *entry;
    void *context;
    unsigned got;
} churn_args;

static void *churn(void *arg)
{
    churn_args *args = arg;
    void *held[8];
    for (int round = 0; round < 2000; round++) {
        unsigned count = 0;
        for (; count < 8; count++)
            if ((held[count] = args->entry->dispatch->Allocate(args->context)) == NULL)
                break;
        for (unsigned i = 0; i < count; i++) {
            *(volatile unsigned char *)held[i] = (unsigned char)round;
            args->entry->dispatch->Free(args->context, held[i]);
        }
        args->got += count;
    }
    return NULL;
}

Test(dma_alloc, thread_safe_under_two_threads, .timeout = 60)
{
    ks_dma_adapter *adapter = test_adapter("mask=32,sg=1");
    for (size_t e = 0; e < sizeof dma_entries / sizeof dma_entries[0]; e++) {
        KSALLOCATOR_FRAMING framing = framing_of(12, 512, 0);
        void *context = open_allocator(dma_entries[e], adapter, &framing);
        churn_args args[2] = {{dma_entries[e], context, 0}, {dma_entries[e], context, 0}};
        pthread_t threads[2];
        for (int t = 0; t < 2; t++)
            pthread_create(&threads[t], NULL, churn, &args[t]);
        for (int t = 0; t < 2; t++)
            pthread_join(threads[t], NULL);
        cr_assert_gt(args[0].got + args[1].got, 0);
        char why[256];
        cr_assert_eq(dma_entries[e]->self_check(context, why, sizeof why), STATUS_SUCCESS, "%s: %s",
                     dma_entries[e]->name, why);
        cr_assert_eq(counter(dma_entries[e], context, "frames_live"), 0);
        dma_entries[e]->dispatch->DeleteAllocator(context);
    }
    ks_dma_adapter_destroy(adapter);
}
