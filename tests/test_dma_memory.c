/*
 * test_dma_memory.c -- what the device sees of memory: stale data on a non-coherent device without
 * syncs and fresh data with them (both directions, and the implied syncs of map and unmap); a
 * coherent device needing none; bounce buffers used beyond a 32-bit (and a 24-bit) mask without
 * an IOMMU with the data still arriving; no bounce with an IOMMU; a mapping error when bouncing
 * is off; IOMMU faults on accesses outside a mapping or against its permissions, with the guard
 * bytes around the mapping untouched.
 */
#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>

#include "test_dma_helpers.h"

#define PAGE 4096u
#define FOUR_GIB ((uint64_t)4 << 30)

static ks_dma_completion run_one(ks_dma_device *device, ks_dma_op op, ks_dma_addr bus, size_t bytes, uint64_t seed)
{
    ks_dma_segment segment = {bus, bytes};
    ks_dma_descriptor descriptor = {.op = op, .pattern_seed = seed};
    if (op == KS_DMA_OP_CHECKSUM) {
        descriptor.src = &segment;
        descriptor.src_count = 1;
    } else {
        descriptor.dst = &segment;
        descriptor.dst_count = 1;
    }
    ks_dma_completion completion;
    ks_error err;
    cr_assert_eq(ks_dma_device_run(device, &descriptor, &completion, 0, &err), STATUS_SUCCESS, "%s", err.message);
    return completion;
}

static ks_dma_addr map_ok(ks_dma_adapter *adapter, void *cpu, size_t bytes, ks_dma_direction direction)
{
    ks_error err;
    ks_dma_addr bus = ks_dma_map_single(adapter, cpu, bytes, direction, &err);
    cr_assert(!ks_dma_mapping_error(adapter, bus), "%s", err.message);
    return bus;
}

/* ---- non-coherent caches ------------------------------------------------------------------- */

Test(dma_memory, non_coherent_device_reads_stale_data_until_sync_for_device)
{
    ks_dma_device *device = test_device("coherent=0");
    ks_dma_adapter *adapter = ks_dma_device_adapter(device);
    guarded buffer = guarded_alloc(2 * PAGE, PAGE);
    ks_dma_addr bus = map_ok(adapter, buffer.user, buffer.bytes, KS_DMA_TO_DEVICE);
    uint64_t before = ks_dma_checksum(buffer.user, buffer.bytes);
    ks_dma_pattern_fill(buffer.user, buffer.bytes, 1, 0); /* after the map: still in the CPU cache */
    uint64_t written = ks_dma_checksum(buffer.user, buffer.bytes);
    cr_assert_eq(run_one(device, KS_DMA_OP_CHECKSUM, bus, buffer.bytes, 0).checksum, before,
                 "without a sync the device reads what memory held at the map");
    ks_dma_sync_single_for_device(adapter, bus, buffer.bytes, KS_DMA_TO_DEVICE);
    cr_assert_eq(run_one(device, KS_DMA_OP_CHECKSUM, bus, buffer.bytes, 0).checksum, written,
                 "after the sync it reads what the CPU wrote");
    ks_dma_unmap_single(adapter, bus, buffer.bytes, KS_DMA_TO_DEVICE);
    cr_assert(guards_intact(&buffer));
    ks_dma_device_stop(device);
    test_expect_rules(adapter, 0, "stale reads are not misuse the checker sees");
    ks_dma_device_destroy(device);
    guarded_free(&buffer);
}

Test(dma_memory, cpu_reads_stale_data_until_sync_for_cpu)
{
    ks_dma_device *device = test_device("coherent=0");
    ks_dma_adapter *adapter = ks_dma_device_adapter(device);
    guarded buffer = guarded_alloc(3 * PAGE + 100, 64);
    ks_dma_addr bus = map_ok(adapter, buffer.user, buffer.bytes, KS_DMA_FROM_DEVICE);
    cr_assert_eq(run_one(device, KS_DMA_OP_FILL, bus, buffer.bytes, 2).result, KS_DMA_RESULT_OK);
    cr_assert_eq(ks_dma_pattern_check(buffer.user, buffer.bytes, 2, 0), 0, "the CPU still sees its cache");
    for (size_t i = 0; i < buffer.bytes; i++)
        cr_assert_eq(buffer.user[i], 0, "byte %zu changed behind the cache", i);
    ks_dma_sync_single_for_cpu(adapter, bus + 100, 1000, KS_DMA_FROM_DEVICE);
    cr_assert_eq(ks_dma_pattern_check(buffer.user + 100, 1000, 2, 100), SIZE_MAX, "the synced range is fresh");
    cr_assert_eq(buffer.user[99], 0, "and only the synced range");
    cr_assert_eq(buffer.user[1100], 0);
    ks_dma_sync_single_for_device(adapter, bus, buffer.bytes, KS_DMA_FROM_DEVICE);
    cr_assert_eq(run_one(device, KS_DMA_OP_FILL, bus, buffer.bytes, 3).result, KS_DMA_RESULT_OK);
    ks_dma_unmap_single(adapter, bus, buffer.bytes, KS_DMA_FROM_DEVICE);
    cr_assert_eq(ks_dma_pattern_check(buffer.user, buffer.bytes, 3, 0), SIZE_MAX, "the unmap syncs for the CPU");
    cr_assert(guards_intact(&buffer), "cache maintenance stays inside the mapping");
    ks_dma_device_destroy(device);
    guarded_free(&buffer);
}

Test(dma_memory, coherent_device_needs_no_sync)
{
    ks_dma_device *device = test_device("coherent=1");
    ks_dma_adapter *adapter = ks_dma_device_adapter(device);
    unsigned char *buffer = aligned_alloc(PAGE, 2 * PAGE);
    memset(buffer, 0, 2 * PAGE);
    ks_dma_addr bus = map_ok(adapter, buffer, 2 * PAGE, KS_DMA_BIDIRECTIONAL);
    cr_assert_eq(run_one(device, KS_DMA_OP_FILL, bus, 2 * PAGE, 4).result, KS_DMA_RESULT_OK);
    cr_assert_eq(ks_dma_pattern_check(buffer, 2 * PAGE, 4, 0), SIZE_MAX, "device writes are seen at once");
    ks_dma_pattern_fill(buffer, 2 * PAGE, 5, 0);
    cr_assert_eq(run_one(device, KS_DMA_OP_CHECKSUM, bus, 2 * PAGE, 0).checksum, ks_dma_checksum(buffer, 2 * PAGE),
                 "CPU writes are read at once");
    ks_dma_adapter_stats stats;
    ks_dma_adapter_get_stats(adapter, &stats);
    cr_assert_eq(stats.cache_writeback_bytes + stats.cache_invalidate_bytes, 0, "no cache maintenance at all");
    ks_dma_unmap_single(adapter, bus, 2 * PAGE, KS_DMA_BIDIRECTIONAL);
    ks_dma_device_destroy(device);
    free(buffer);
}

Test(dma_memory, common_buffers_are_coherent_on_a_non_coherent_device)
{
    ks_dma_device *device = test_device("coherent=0");
    ks_dma_adapter *adapter = ks_dma_device_adapter(device);
    ks_dma_addr bus;
    unsigned char *cpu = ks_dma_alloc_coherent(adapter, 3 * PAGE, &bus, NULL);
    cr_assert_not_null(cpu);
    for (size_t i = 0; i < 3 * PAGE; i++)
        cr_assert_eq(cpu[i], 0, "a common buffer starts zeroed");
    cr_assert_eq(bus % (4 * PAGE), 0, "naturally aligned: 12 KiB on 16 KiB");
    cr_assert_eq((uintptr_t)cpu % (4 * PAGE), 0);
    cr_assert_eq(run_one(device, KS_DMA_OP_FILL, bus, 3 * PAGE, 6).result, KS_DMA_RESULT_OK);
    cr_assert_eq(ks_dma_pattern_check(cpu, 3 * PAGE, 6, 0), SIZE_MAX, "uncached: no sync needed");
    ks_dma_free_coherent(adapter, 3 * PAGE, cpu, bus);
    ks_dma_device_destroy(device);
}

/* ---- bounce buffers ------------------------------------------------------------------------- */

Test(dma_memory, bounce_buffers_beyond_a_32_bit_mask)
{
    ks_dma_device *device = test_device("mask=32,high=100");
    ks_dma_adapter *adapter = ks_dma_device_adapter(device);
    guarded buffer = guarded_alloc(5 * PAGE, PAGE);
    ks_dma_addr bus = map_ok(adapter, buffer.user, buffer.bytes, KS_DMA_FROM_DEVICE);
    uint64_t phys;
    cr_assert(ks_dma_adapter_phys_of(adapter, buffer.user, &phys));
    cr_assert_geq(phys, FOUR_GIB, "the buffer lies above 4 GiB");
    cr_assert_lt(bus + buffer.bytes, FOUR_GIB, "but the device gets an address below");
    ks_dma_adapter_stats stats;
    ks_dma_adapter_get_stats(adapter, &stats);
    cr_assert_eq(stats.bounced_mappings, 1);
    cr_assert_eq(run_one(device, KS_DMA_OP_FILL, bus, buffer.bytes, 7).result, KS_DMA_RESULT_OK);
    cr_assert_eq(ks_dma_pattern_check(buffer.user, buffer.bytes, 7, 0), 0, "the data sits in the bounce slot");
    ks_dma_sync_single_for_cpu(adapter, bus, buffer.bytes, KS_DMA_FROM_DEVICE);
    cr_assert_eq(ks_dma_pattern_check(buffer.user, buffer.bytes, 7, 0), SIZE_MAX, "the sync copies it back");
    ks_dma_unmap_single(adapter, bus, buffer.bytes, KS_DMA_FROM_DEVICE);
    cr_assert(guards_intact(&buffer), "the copy-back stays inside the buffer");

    ks_dma_pattern_fill(buffer.user, buffer.bytes, 8, 0);
    bus = map_ok(adapter, buffer.user, buffer.bytes, KS_DMA_TO_DEVICE);
    cr_assert_eq(run_one(device, KS_DMA_OP_CHECKSUM, bus, buffer.bytes, 0).checksum,
                 ks_dma_checksum(buffer.user, buffer.bytes), "the map copies into the slot");
    ks_dma_pattern_fill(buffer.user, buffer.bytes, 9, 0);
    cr_assert_neq(run_one(device, KS_DMA_OP_CHECKSUM, bus, buffer.bytes, 0).checksum,
                  ks_dma_checksum(buffer.user, buffer.bytes), "even a coherent device reads the stale slot");
    ks_dma_sync_single_for_device(adapter, bus, buffer.bytes, KS_DMA_TO_DEVICE);
    cr_assert_eq(run_one(device, KS_DMA_OP_CHECKSUM, bus, buffer.bytes, 0).checksum,
                 ks_dma_checksum(buffer.user, buffer.bytes), "until the sync bounces it again");
    ks_dma_unmap_single(adapter, bus, buffer.bytes, KS_DMA_TO_DEVICE);
    ks_dma_adapter_get_stats(adapter, &stats);
    cr_assert_gt(stats.bounce_bytes_copied, 3 * buffer.bytes);
    ks_dma_device_stop(device);
    test_expect_rules(adapter, 0, "bouncing");
    ks_dma_device_destroy(device);
    guarded_free(&buffer);
}

Test(dma_memory, bounce_pool_below_16_mib_for_a_24_bit_device)
{
    ks_dma_device *device = test_device("mask=24,high_boundary=16M,high=100,coherent=0");
    ks_dma_adapter *adapter = ks_dma_device_adapter(device);
    unsigned char *buffer = aligned_alloc(PAGE, 8 * PAGE);
    ks_dma_pattern_fill(buffer, 8 * PAGE, 10, 0);
    ks_dma_addr bus = map_ok(adapter, buffer, 8 * PAGE, KS_DMA_BIDIRECTIONAL);
    cr_assert_lt(bus + 8 * PAGE, (uint64_t)16 << 20, "a 24-bit device gets a 24-bit address");
    cr_assert_eq(run_one(device, KS_DMA_OP_CHECKSUM, bus, 8 * PAGE, 0).checksum, ks_dma_checksum(buffer, 8 * PAGE));
    cr_assert_eq(run_one(device, KS_DMA_OP_FILL, bus, 8 * PAGE, 11).result, KS_DMA_RESULT_OK);
    ks_dma_unmap_single(adapter, bus, 8 * PAGE, KS_DMA_BIDIRECTIONAL);
    cr_assert_eq(ks_dma_pattern_check(buffer, 8 * PAGE, 11, 0), SIZE_MAX, "bounce plus non-coherent cache, both undone");
    ks_dma_addr coherent_bus;
    void *coherent = ks_dma_alloc_coherent(adapter, PAGE, &coherent_bus, NULL);
    cr_assert_lt(coherent_bus, (uint64_t)16 << 20, "common buffers too");
    ks_dma_free_coherent(adapter, PAGE, coherent, coherent_bus);
    ks_dma_device_destroy(device);
    free(buffer);
}

Test(dma_memory, bounce_limits_and_bouncing_off)
{
    ks_dma_adapter *adapter = test_adapter("mask=32,high=100");
    unsigned char *big = aligned_alloc(PAGE, 512 * 1024);
    ks_error err;
    ks_dma_addr bus = ks_dma_map_single(adapter, big, 512 * 1024, KS_DMA_TO_DEVICE, &err);
    cr_assert(ks_dma_mapping_error(adapter, bus), "swiotlb bounces at most 256 KiB at once");
    cr_assert_not_null(strstr(err.message, "at most 128"), "%s", err.message);
    bus = map_ok(adapter, big, 256 * 1024, KS_DMA_TO_DEVICE);
    ks_dma_unmap_single(adapter, bus, 256 * 1024, KS_DMA_TO_DEVICE);
    ks_dma_adapter_destroy(adapter);

    adapter = test_adapter("mask=32,high=100,bounce=0");
    bus = ks_dma_map_single(adapter, big, PAGE, KS_DMA_TO_DEVICE, &err);
    cr_assert(ks_dma_mapping_error(adapter, bus), "beyond the mask with bouncing off: the map fails");
    cr_assert_eq(err.status, STATUS_INSUFFICIENT_RESOURCES);
    cr_assert_not_null(strstr(err.message, "beyond the DMA mask"), "%s", err.message);
    ks_dma_adapter_stats stats;
    ks_dma_adapter_get_stats(adapter, &stats);
    cr_assert_eq(stats.map_failures, 1);
    cr_assert_eq(stats.live_mappings, 0);
    ks_dma_adapter_destroy(adapter);
    free(big);
}

Test(dma_memory, iommu_reaches_high_memory_without_bouncing)
{
    ks_dma_device *device = test_device("mask=32,high=100,iommu=1,sg=1");
    ks_dma_adapter *adapter = ks_dma_device_adapter(device);
    unsigned char *buffer = aligned_alloc(PAGE, 16 * PAGE);
    ks_dma_pattern_fill(buffer, 16 * PAGE, 12, 0);
    ks_dma_sg sg[4];
    for (int i = 0; i < 4; i++)
        sg[i] = (ks_dma_sg){.cpu = buffer + 4 * i * PAGE, .bytes = 4 * PAGE};
    cr_assert_eq(ks_dma_map_sg(adapter, sg, 4, KS_DMA_TO_DEVICE, NULL), 1, "page-aligned entries merge into one IOVA run");
    cr_assert_eq(sg[0].bus_bytes, 16 * PAGE);
    cr_assert_lt(sg[0].bus_addr + 16 * PAGE, FOUR_GIB);
    cr_assert_eq(run_one(device, KS_DMA_OP_CHECKSUM, sg[0].bus_addr, 16 * PAGE, 0).checksum,
                 ks_dma_checksum(buffer, 16 * PAGE));
    ks_dma_adapter_stats stats;
    ks_dma_adapter_get_stats(adapter, &stats);
    cr_assert_eq(stats.bounced_mappings, 0, "an IOMMU needs no bounce buffers");
    cr_assert_geq(stats.phys_pages_high, 16);
    ks_dma_unmap_sg(adapter, sg, 4, KS_DMA_TO_DEVICE);
    ks_dma_device_destroy(device);
    free(buffer);
}

/* ---- IOMMU faults -------------------------------------------------------------------------- */

Test(dma_memory, iommu_fault_outside_a_mapping_touches_nothing)
{
    ks_dma_device *device = test_device("iommu=1");
    ks_dma_adapter *adapter = ks_dma_device_adapter(device);
    guarded buffer = guarded_alloc(2 * PAGE, PAGE);
    ks_dma_addr bus = map_ok(adapter, buffer.user, buffer.bytes, KS_DMA_FROM_DEVICE);

    ks_dma_completion past_end = run_one(device, KS_DMA_OP_FILL, bus, buffer.bytes + PAGE, 13);
    cr_assert_eq(past_end.result, KS_DMA_RESULT_IOMMU_FAULT, "%s", ks_dma_result_name(past_end.result));
    cr_assert_eq(past_end.bytes_done, buffer.bytes, "everything up to the mapping's end was written");
    cr_assert_eq(past_end.fault_bus_addr, bus + buffer.bytes);
    ks_dma_completion before_start = run_one(device, KS_DMA_OP_FILL, bus - PAGE, 64, 13);
    cr_assert_eq(before_start.result, KS_DMA_RESULT_IOMMU_FAULT);
    cr_assert_eq(before_start.bytes_done, 0);
    ks_dma_completion read_denied = run_one(device, KS_DMA_OP_CHECKSUM, bus, 64, 0);
    cr_assert_eq(read_denied.result, KS_DMA_RESULT_IOMMU_FAULT, "a from-device mapping is write-only");

    ks_dma_adapter_stats stats;
    ks_dma_adapter_get_stats(adapter, &stats);
    cr_assert_eq(stats.iommu_faults, 3);
    cr_assert_eq(ks_dma_report_count_rule(adapter, KS_DMA_RULE_DEVICE_ACCESS), 3, "each fault is reported");
    cr_assert(guards_intact(&buffer), "no byte outside the mapping was written");
    ks_dma_sync_single_for_cpu(adapter, bus, buffer.bytes, KS_DMA_FROM_DEVICE);
    cr_assert_eq(ks_dma_pattern_check(buffer.user, buffer.bytes, 13, 0), SIZE_MAX);
    ks_dma_unmap_single(adapter, bus, buffer.bytes, KS_DMA_FROM_DEVICE);
    ks_dma_device_destroy(device);
    guarded_free(&buffer);
}

Test(dma_memory, sub_page_overrun_is_refused_byte_exact)
{
    ks_dma_device *device = test_device("iommu=1");
    ks_dma_adapter *adapter = ks_dma_device_adapter(device);
    guarded buffer = guarded_alloc(1000, 64);
    ks_dma_addr bus = map_ok(adapter, buffer.user, buffer.bytes, KS_DMA_BIDIRECTIONAL);
    /* The IOMMU maps whole pages; the mapping's last byte is mid-page. */
    ks_dma_completion over = run_one(device, KS_DMA_OP_FILL, bus, 1064, 14);
    cr_assert_eq(over.result, KS_DMA_RESULT_ACCESS_ERROR, "%s", ks_dma_result_name(over.result));
    cr_assert_eq(over.bytes_done, 1000);
    cr_assert(guards_intact(&buffer), "the rest of the page is not the device's");
    ks_dma_report report;
    cr_assert(test_find_report(adapter, KS_DMA_RULE_DEVICE_ACCESS, &report));
    cr_assert_eq(report.bus_addr, bus + 1000);
    ks_dma_unmap_single(adapter, bus, buffer.bytes, KS_DMA_BIDIRECTIONAL);
    ks_dma_device_destroy(device);
    guarded_free(&buffer);
}

Test(dma_memory, unmapped_memory_is_gone_for_the_device)
{
    ks_dma_device *device = test_device("iommu=1");
    ks_dma_adapter *adapter = ks_dma_device_adapter(device);
    guarded buffer = guarded_alloc(PAGE, PAGE);
    ks_dma_addr bus = map_ok(adapter, buffer.user, PAGE, KS_DMA_FROM_DEVICE);
    ks_dma_unmap_single(adapter, bus, PAGE, KS_DMA_FROM_DEVICE);
    ks_dma_completion late = run_one(device, KS_DMA_OP_FILL, bus, PAGE, 15);
    cr_assert_eq(late.result, KS_DMA_RESULT_IOMMU_FAULT, "a device still using an unmapped address faults");
    for (size_t i = 0; i < PAGE; i++)
        cr_assert_eq(buffer.user[i], 0);
    cr_assert(guards_intact(&buffer));
    ks_dma_device_destroy(device);
    guarded_free(&buffer);
}
