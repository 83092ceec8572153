/*
 * test_dma_checker.c -- every DMA-debug rule tripped by a deliberate misuse, each report checked
 * for what it names (the call, the address, the mapping), and correct use -- single, sg and
 * coherent mappings, syncs, device transfers, the frame registry -- staying silent on coherent and
 * non-coherent devices, with and without IOMMU, with memory beyond a 32-bit and a 24-bit mask.
 */
#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>

#include "test_dma_helpers.h"

#define PAGE 4096u

static void *page_buffer(size_t bytes)
{
    void *buffer = aligned_alloc(PAGE, (bytes + PAGE - 1u) & ~(size_t)(PAGE - 1u));
    cr_assert_not_null(buffer);
    memset(buffer, 0, bytes);
    return buffer;
}

static ks_dma_addr map_checked(ks_dma_adapter *adapter, void *cpu, size_t bytes, ks_dma_direction direction)
{
    ks_error err;
    ks_dma_addr bus = ks_dma_map_single(adapter, cpu, bytes, direction, &err);
    cr_assert(!ks_dma_mapping_error(adapter, bus), "map of %zu bytes failed: %s", bytes, err.message);
    return bus;
}

static ks_dma_report expect_only(ks_dma_adapter *adapter, ks_dma_rule rule, const char *what)
{
    test_expect_rules(adapter, RULE_BIT(rule), what);
    ks_dma_report report;
    cr_assert(test_find_report(adapter, rule, &report), "%s: no %s report kept", what, ks_dma_rule_name(rule));
    cr_assert_not_null(strstr(report.message, ks_dma_rule_name(rule)), "message names the rule: %s", report.message);
    cr_assert_not_null(strstr(report.message, report.call), "message names the call: %s", report.message);
    return report;
}

/* ---- release rules ------------------------------------------------------------------------- */

Test(dma_checker, unmap_of_memory_never_mapped)
{
    ks_dma_adapter *adapter = test_adapter("mask=32");
    ks_dma_unmap_single(adapter, 0x7000000, 4096, KS_DMA_TO_DEVICE);
    ks_dma_report report = expect_only(adapter, KS_DMA_RULE_NEVER_MAPPED, "unmap of nothing");
    cr_assert_str_eq(report.call, "ks_dma_unmap_single");
    cr_assert_eq(report.bus_addr, 0x7000000);
    cr_assert_eq(report.bytes, 4096);
    cr_assert(!report.has_mapping);
    cr_assert_not_null(strstr(report.message, "0x7000000"), "%s", report.message);
    ks_dma_reports_clear(adapter);
    int dummy;
    ks_dma_free_coherent(adapter, 4096, &dummy, 0x9000);
    expect_only(adapter, KS_DMA_RULE_NEVER_MAPPED, "free of a common buffer never allocated");
    ks_dma_adapter_destroy(adapter);
}

Test(dma_checker, double_unmap_and_double_free)
{
    ks_dma_adapter *adapter = test_adapter("mask=32");
    void *buffer = page_buffer(PAGE);
    ks_dma_addr bus = map_checked(adapter, buffer, PAGE, KS_DMA_FROM_DEVICE);
    ks_dma_unmap_single(adapter, bus, PAGE, KS_DMA_FROM_DEVICE);
    test_expect_rules(adapter, 0, "a correct unmap");
    ks_dma_unmap_single(adapter, bus, PAGE, KS_DMA_FROM_DEVICE);
    ks_dma_report report = expect_only(adapter, KS_DMA_RULE_DOUBLE_UNMAP, "second unmap");
    cr_assert_eq(report.bus_addr, bus);
    cr_assert_not_null(strstr(report.message, "already released at op"), "%s", report.message);
    ks_dma_reports_clear(adapter);

    ks_dma_addr coherent_bus;
    void *coherent = ks_dma_alloc_coherent(adapter, 8192, &coherent_bus, NULL);
    cr_assert_not_null(coherent);
    ks_dma_free_coherent(adapter, 8192, coherent, coherent_bus);
    ks_dma_free_coherent(adapter, 8192, coherent, coherent_bus);
    expect_only(adapter, KS_DMA_RULE_DOUBLE_UNMAP, "second free of a common buffer");
    ks_dma_adapter_destroy(adapter);
    free(buffer);
}

Test(dma_checker, unmap_with_another_size)
{
    ks_dma_adapter *adapter = test_adapter("mask=32");
    void *buffer = page_buffer(2 * PAGE);
    ks_dma_addr bus = map_checked(adapter, buffer, 2 * PAGE, KS_DMA_TO_DEVICE);
    ks_dma_unmap_single(adapter, bus, PAGE, KS_DMA_TO_DEVICE);
    ks_dma_report report = expect_only(adapter, KS_DMA_RULE_SIZE_MISMATCH, "unmap with half the size");
    cr_assert_str_eq(report.call, "ks_dma_unmap_single");
    cr_assert_eq(report.bus_addr, bus);
    cr_assert_eq(report.bytes, PAGE);
    cr_assert(report.has_mapping, "the report names the mapping");
    cr_assert_eq(report.mapping.bytes, 2 * PAGE);
    cr_assert_eq(report.mapping.bus_addr, bus);
    cr_assert_eq(report.mapping.cpu_addr, (uintptr_t)buffer);
    cr_assert_eq(report.mapping.kind, KS_DMA_KIND_SINGLE);
    cr_assert_eq(report.mapping.direction, KS_DMA_TO_DEVICE);
    cr_assert_lt(report.mapping.map_op, report.op_index);
    ks_dma_adapter_stats stats;
    ks_dma_adapter_get_stats(adapter, &stats);
    cr_assert_eq(stats.live_mappings, 0, "the mapping the adapter knows is unmapped all the same");
    ks_dma_adapter_destroy(adapter);
    free(buffer);
}

Test(dma_checker, unmap_with_another_direction)
{
    ks_dma_adapter *adapter = test_adapter("mask=32");
    void *buffer = page_buffer(PAGE);
    ks_dma_addr bus = map_checked(adapter, buffer, PAGE, KS_DMA_TO_DEVICE);
    ks_dma_unmap_single(adapter, bus, PAGE, KS_DMA_FROM_DEVICE);
    ks_dma_report report = expect_only(adapter, KS_DMA_RULE_DIRECTION_MISMATCH, "unmap from-device of a to-device map");
    cr_assert_not_null(strstr(report.message, "to-device"), "%s", report.message);
    ks_dma_adapter_destroy(adapter);
    free(buffer);
}

Test(dma_checker, release_of_another_kind)
{
    ks_dma_adapter *adapter = test_adapter("mask=32,sg=1");
    void *buffer = page_buffer(PAGE);
    ks_dma_addr bus = map_checked(adapter, buffer, PAGE, KS_DMA_BIDIRECTIONAL);
    ks_dma_sg as_sg = {.cpu = buffer, .bytes = PAGE, .bus_addr = bus, .bus_bytes = PAGE};
    ks_dma_unmap_sg(adapter, &as_sg, 1, KS_DMA_BIDIRECTIONAL);
    ks_dma_report report = expect_only(adapter, KS_DMA_RULE_KIND_MISMATCH, "unmap_sg of a single mapping");
    cr_assert_eq(report.mapping.kind, KS_DMA_KIND_SINGLE);
    ks_dma_reports_clear(adapter);
    ks_dma_free_coherent(adapter, PAGE, buffer, bus);
    expect_only(adapter, KS_DMA_RULE_KIND_MISMATCH, "free_coherent of a single mapping");
    ks_dma_reports_clear(adapter);
    ks_dma_unmap_single(adapter, bus, PAGE, KS_DMA_BIDIRECTIONAL);
    test_expect_rules(adapter, 0, "the single mapping was left alone and unmaps cleanly");

    ks_dma_addr coherent_bus;
    void *coherent = ks_dma_alloc_coherent(adapter, PAGE, &coherent_bus, NULL);
    ks_dma_unmap_single(adapter, coherent_bus, PAGE, KS_DMA_BIDIRECTIONAL);
    expect_only(adapter, KS_DMA_RULE_KIND_MISMATCH, "unmap_single of a common buffer");
    ks_dma_free_coherent(adapter, PAGE, coherent, coherent_bus);
    ks_dma_adapter_destroy(adapter);
    free(buffer);
}

Test(dma_checker, sg_unmap_and_sync_with_another_count)
{
    ks_dma_adapter *adapter = test_adapter("mask=32,sg=1");
    unsigned char *buffer = page_buffer(6 * PAGE);
    ks_dma_sg sg[3];
    for (int i = 0; i < 3; i++)
        sg[i] = (ks_dma_sg){.cpu = buffer + 2 * i * PAGE, .bytes = PAGE};
    uint32_t mapped = ks_dma_map_sg(adapter, sg, 3, KS_DMA_TO_DEVICE, NULL);
    cr_assert_eq(mapped, 3);
    ks_dma_sync_sg_for_device(adapter, sg, 2, KS_DMA_TO_DEVICE);
    expect_only(adapter, KS_DMA_RULE_SG_COUNT_MISMATCH, "sync_sg with 2 of 3 entries");
    ks_dma_reports_clear(adapter);
    ks_dma_unmap_sg(adapter, sg, 2, KS_DMA_TO_DEVICE);
    ks_dma_report report = expect_only(adapter, KS_DMA_RULE_SG_COUNT_MISMATCH, "unmap_sg with 2 of 3 entries");
    cr_assert_eq(report.mapping.sg_nents, 3);
    ks_dma_adapter_destroy(adapter);
    free(buffer);
}

Test(dma_checker, free_coherent_with_another_cpu_address)
{
    ks_dma_adapter *adapter = test_adapter("mask=32");
    ks_dma_addr bus;
    unsigned char *cpu = ks_dma_alloc_coherent(adapter, PAGE, &bus, NULL);
    cr_assert_not_null(cpu);
    ks_dma_free_coherent(adapter, PAGE, cpu + 64, bus);
    ks_dma_report report = expect_only(adapter, KS_DMA_RULE_CPU_ADDRESS_MISMATCH, "free with cpu + 64");
    cr_assert_eq(report.cpu_addr, (uintptr_t)(cpu + 64));
    cr_assert_eq(report.mapping.cpu_addr, (uintptr_t)cpu);
    ks_dma_adapter_stats stats;
    ks_dma_adapter_get_stats(adapter, &stats);
    cr_assert_eq(stats.live_coherent_buffers, 0, "the buffer the adapter knows is freed");
    ks_dma_adapter_destroy(adapter);
}

/* ---- sync rules ------------------------------------------------------------------------------ */

Test(dma_checker, sync_of_memory_never_mapped)
{
    ks_dma_adapter *adapter = test_adapter("mask=32");
    ks_dma_sync_single_for_cpu(adapter, 0x5000000, 64, KS_DMA_FROM_DEVICE);
    ks_dma_report report = expect_only(adapter, KS_DMA_RULE_SYNC_NEVER_MAPPED, "sync of nothing");
    cr_assert_str_eq(report.call, "ks_dma_sync_single_for_cpu");
    cr_assert_eq(report.bus_addr, 0x5000000);
    ks_dma_adapter_destroy(adapter);
}

Test(dma_checker, sync_outside_the_mapping)
{
    ks_dma_adapter *adapter = test_adapter("mask=32");
    void *buffer = page_buffer(2 * PAGE);
    ks_dma_addr bus = map_checked(adapter, buffer, PAGE, KS_DMA_FROM_DEVICE);
    ks_dma_sync_single_for_cpu(adapter, bus + 100, 200, KS_DMA_FROM_DEVICE);
    test_expect_rules(adapter, 0, "a sync inside the mapping");
    ks_dma_sync_single_for_cpu(adapter, bus, 2 * PAGE, KS_DMA_FROM_DEVICE);
    ks_dma_report report = expect_only(adapter, KS_DMA_RULE_SYNC_OUT_OF_RANGE, "sync of twice the mapping");
    cr_assert_not_null(strstr(report.message, "only 4096 lie in the mapping"), "%s", report.message);
    ks_dma_reports_clear(adapter);
    ks_dma_sync_single_for_device(adapter, bus + PAGE - 8, 16, KS_DMA_FROM_DEVICE);
    expect_only(adapter, KS_DMA_RULE_SYNC_OUT_OF_RANGE, "sync straddling the end");
    ks_dma_unmap_single(adapter, bus, PAGE, KS_DMA_FROM_DEVICE);
    ks_dma_adapter_destroy(adapter);
    free(buffer);
}

Test(dma_checker, sync_in_the_wrong_direction)
{
    ks_dma_adapter *adapter = test_adapter("mask=32,coherent=0");
    void *buffer = page_buffer(PAGE);
    ks_dma_addr to_device = map_checked(adapter, buffer, 1024, KS_DMA_TO_DEVICE);
    ks_dma_sync_single_for_cpu(adapter, to_device, 1024, KS_DMA_FROM_DEVICE);
    expect_only(adapter, KS_DMA_RULE_SYNC_DIRECTION, "from-device sync of a to-device mapping");
    ks_dma_reports_clear(adapter);
    ks_dma_sync_single_for_device(adapter, to_device, 1024, KS_DMA_NONE);
    expect_only(adapter, KS_DMA_RULE_SYNC_DIRECTION, "a sync with an invalid direction");
    ks_dma_reports_clear(adapter);
    ks_dma_addr both = map_checked(adapter, (unsigned char *)buffer + 2048, 1024, KS_DMA_BIDIRECTIONAL);
    ks_dma_sync_single_for_device(adapter, both, 1024, KS_DMA_TO_DEVICE);
    ks_dma_sync_single_for_cpu(adapter, both, 1024, KS_DMA_FROM_DEVICE);
    test_expect_rules(adapter, 0, "either direction on a bidirectional mapping");
    ks_dma_unmap_single(adapter, to_device, 1024, KS_DMA_TO_DEVICE);
    ks_dma_unmap_single(adapter, both, 1024, KS_DMA_BIDIRECTIONAL);
    ks_dma_adapter_destroy(adapter);
    free(buffer);
}

/* ---- mapping rules ------------------------------------------------------------------------ */

Test(dma_checker, overlapping_mappings)
{
    ks_dma_adapter *adapter = test_adapter("mask=32");
    unsigned char *buffer = page_buffer(PAGE);
    ks_dma_addr first = map_checked(adapter, buffer, PAGE, KS_DMA_TO_DEVICE);
    ks_dma_addr second = map_checked(adapter, buffer, PAGE, KS_DMA_TO_DEVICE);
    test_expect_rules(adapter, 0, "two read-only mappings of one buffer are legitimate");
    ks_dma_addr third = map_checked(adapter, buffer + 1024, 2048, KS_DMA_FROM_DEVICE);
    ks_dma_report report = expect_only(adapter, KS_DMA_RULE_OVERLAP, "a writable mapping over a live one");
    cr_assert_str_eq(report.call, "ks_dma_map_single");
    cr_assert_eq(report.cpu_addr, (uintptr_t)(buffer + 1024));
    cr_assert(report.has_mapping);
    cr_assert_eq(report.mapping.cpu_addr, (uintptr_t)buffer, "names the mapping it overlaps");
    ks_dma_reports_clear(adapter);
    ks_dma_unmap_single(adapter, third, 2048, KS_DMA_FROM_DEVICE);
    ks_dma_unmap_single(adapter, second, PAGE, KS_DMA_TO_DEVICE);
    ks_dma_unmap_single(adapter, first, PAGE, KS_DMA_TO_DEVICE);
    test_expect_rules(adapter, 0, "unmapping overlapping mappings by their own addresses");
    ks_dma_adapter_destroy(adapter);
    free(buffer);
}

Test(dma_checker, leaks_at_teardown)
{
    ks_dma_adapter *adapter = test_adapter("mask=32");
    void *buffer = page_buffer(PAGE);
    ks_dma_addr bus = map_checked(adapter, buffer, PAGE, KS_DMA_TO_DEVICE);
    ks_dma_addr coherent_bus;
    cr_assert_not_null(ks_dma_alloc_coherent(adapter, 3 * PAGE, &coherent_bus, NULL));
    ks_dma_adapter_check_leaks(adapter);
    cr_assert_eq(ks_dma_report_count_rule(adapter, KS_DMA_RULE_LEAK), 2, "one report per leaked mapping");
    test_expect_rules(adapter, RULE_BIT(KS_DMA_RULE_LEAK), "teardown");
    ks_dma_report report;
    bool saw_single = false, saw_coherent = false;
    for (size_t i = 0; ks_dma_report_at(adapter, i, &report); i++) {
        cr_assert_str_eq(report.call, "teardown");
        saw_single |= report.mapping.kind == KS_DMA_KIND_SINGLE && report.bus_addr == bus;
        saw_coherent |= report.mapping.kind == KS_DMA_KIND_COHERENT && report.bus_addr == coherent_bus &&
                        report.mapping.bytes == 3 * PAGE;
    }
    cr_assert(saw_single && saw_coherent, "each leak names its mapping");
    ks_dma_adapter_check_leaks(adapter);
    cr_assert_eq(ks_dma_report_count_rule(adapter, KS_DMA_RULE_LEAK), 2, "reported once");
    ks_dma_adapter_destroy(adapter); /* releases both; LSan proves it */
    free(buffer);
}

Test(dma_checker, mapping_error_never_checked)
{
    ks_dma_adapter *adapter = test_adapter("mask=32");
    void *buffer = page_buffer(PAGE);
    ks_dma_addr bus = ks_dma_map_single(adapter, buffer, PAGE, KS_DMA_TO_DEVICE, NULL);
    ks_dma_unmap_single(adapter, bus, PAGE, KS_DMA_TO_DEVICE);
    ks_dma_report report = expect_only(adapter, KS_DMA_RULE_ERROR_NOT_CHECKED, "unmap of an untested mapping");
    cr_assert_eq(report.bus_addr, bus);
    ks_dma_adapter_destroy(adapter);
    free(buffer);
}

Test(dma_checker, invalid_maps_fail_and_are_reported)
{
    ks_dma_adapter *adapter = test_adapter("mask=32,sg=1");
    void *buffer = page_buffer(PAGE);
    ks_error err;
    cr_assert(ks_dma_mapping_error(adapter, ks_dma_map_single(adapter, NULL, 64, KS_DMA_TO_DEVICE, &err)));
    cr_assert_eq(err.status, STATUS_INVALID_PARAMETER);
    cr_assert(ks_dma_mapping_error(adapter, ks_dma_map_single(adapter, buffer, 0, KS_DMA_TO_DEVICE, &err)));
    cr_assert(ks_dma_mapping_error(adapter, ks_dma_map_single(adapter, buffer, 64, KS_DMA_NONE, &err)));
    cr_assert_eq(ks_dma_map_sg(adapter, NULL, 0, KS_DMA_TO_DEVICE, &err), 0);
    ks_dma_addr bus;
    cr_assert_null(ks_dma_alloc_coherent(adapter, 0, &bus, &err));
    cr_assert_eq(bus, KS_DMA_ADDR_ERROR);
    cr_assert_eq(ks_dma_report_count_rule(adapter, KS_DMA_RULE_INVALID_MAP), 5);
    test_expect_rules(adapter, RULE_BIT(KS_DMA_RULE_INVALID_MAP), "invalid maps");
    ks_dma_adapter_check_leaks(adapter);
    test_expect_rules(adapter, RULE_BIT(KS_DMA_RULE_INVALID_MAP), "failed maps leave nothing live");
    ks_dma_adapter_destroy(adapter);
    free(buffer);
}

/* ---- segment rules ------------------------------------------------------------------------ */

Test(dma_checker, sg_segment_crossing_the_boundary)
{
    ks_dma_adapter *adapter = test_adapter("mask=32,sg=1,boundary=64K");
    void *buffer = page_buffer(128 * 1024);
    ks_dma_sg entry = {.cpu = buffer, .bytes = 128 * 1024};
    cr_assert_eq(ks_dma_map_sg(adapter, &entry, 1, KS_DMA_TO_DEVICE, NULL), 1);
    ks_dma_report report = expect_only(adapter, KS_DMA_RULE_SEGMENT_BOUNDARY, "a 128 KiB segment, 64 KiB boundary");
    cr_assert_str_eq(report.call, "ks_dma_map_sg");
    cr_assert_eq(report.bus_addr, entry.bus_addr);
    ks_dma_unmap_sg(adapter, &entry, 1, KS_DMA_TO_DEVICE);
    ks_dma_adapter_destroy(adapter);
    free(buffer);
}

Test(dma_checker, sg_segment_too_long)
{
    ks_dma_adapter *adapter = test_adapter("mask=32,sg=1,max_seg=64K");
    void *buffer = page_buffer(128 * 1024);
    ks_dma_sg entry = {.cpu = buffer, .bytes = 128 * 1024};
    cr_assert_eq(ks_dma_map_sg(adapter, &entry, 1, KS_DMA_TO_DEVICE, NULL), 1);
    ks_dma_report report = expect_only(adapter, KS_DMA_RULE_SEGMENT_LENGTH, "a 128 KiB segment, 64 KiB maximum");
    cr_assert_eq(report.bytes, 128 * 1024);
    ks_dma_unmap_sg(adapter, &entry, 1, KS_DMA_TO_DEVICE);
    ks_dma_adapter_destroy(adapter);
    free(buffer);
}

Test(dma_checker, too_many_segments)
{
    ks_dma_adapter *adapter = test_adapter("mask=32,sg=1,max_segs=2");
    unsigned char *buffer = page_buffer(6 * PAGE);
    ks_dma_sg sg[3];
    for (int i = 0; i < 3; i++)
        sg[i] = (ks_dma_sg){.cpu = buffer + 2 * i * PAGE, .bytes = 512};
    cr_assert_eq(ks_dma_map_sg(adapter, sg, 3, KS_DMA_TO_DEVICE, NULL), 3);
    expect_only(adapter, KS_DMA_RULE_SEGMENT_COUNT, "3 segments, the device takes 2");
    ks_dma_unmap_sg(adapter, sg, 3, KS_DMA_TO_DEVICE);
    ks_dma_adapter_destroy(adapter);

    adapter = test_adapter("mask=32"); /* no scatter/gather at all */
    cr_assert_eq(ks_dma_map_sg(adapter, sg, 2, KS_DMA_TO_DEVICE, NULL), 2);
    ks_dma_report report = expect_only(adapter, KS_DMA_RULE_SEGMENT_COUNT, "an sg list on a device without sg");
    cr_assert_not_null(strstr(report.message, "no scatter/gather"), "%s", report.message);
    ks_dma_unmap_sg(adapter, sg, 2, KS_DMA_TO_DEVICE);
    ks_dma_adapter_destroy(adapter);
    free(buffer);
}

Test(dma_checker, misaligned_segment)
{
    ks_dma_adapter *adapter = test_adapter("mask=32,align=64");
    unsigned char *buffer = page_buffer(PAGE);
    ks_dma_addr aligned = map_checked(adapter, buffer + 128, 256, KS_DMA_TO_DEVICE);
    test_expect_rules(adapter, 0, "a 64-byte aligned buffer");
    ks_dma_addr misaligned = map_checked(adapter, buffer + 1024 + 8, 256, KS_DMA_TO_DEVICE);
    ks_dma_report report = expect_only(adapter, KS_DMA_RULE_SEGMENT_ALIGN, "a buffer 8 bytes off");
    cr_assert_eq(report.bus_addr, misaligned);
    ks_dma_unmap_single(adapter, aligned, 256, KS_DMA_TO_DEVICE);
    ks_dma_unmap_single(adapter, misaligned, 256, KS_DMA_TO_DEVICE);
    ks_dma_adapter_destroy(adapter);
    free(buffer);
}

Test(dma_checker, descriptor_segments_against_the_device)
{
    ks_dma_device *device = test_device("mask=32,sg=1,boundary=64K,max_seg=32K,max_segs=2,align=64");
    ks_dma_adapter *adapter = ks_dma_device_adapter(device);
    struct {
        ks_dma_segment segment;
        ks_dma_rule rule;
    } cases[] = {
        {{(uint64_t)1 << 32, 4096}, KS_DMA_RULE_SEGMENT_MASK},
        {{0xF000, 0x2000}, KS_DMA_RULE_SEGMENT_BOUNDARY},
        {{0x20000, 0x9000}, KS_DMA_RULE_SEGMENT_LENGTH},
        {{0x20010, 0x100}, KS_DMA_RULE_SEGMENT_ALIGN},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        ks_dma_descriptor descriptor = {.op = KS_DMA_OP_FILL, .dst = &cases[i].segment, .dst_count = 1};
        uint64_t cookie;
        ks_error err;
        cr_assert_eq(ks_dma_device_submit(device, &descriptor, &cookie, &err), STATUS_INVALID_PARAMETER,
                     "case %zu accepted", i);
        expect_only(adapter, cases[i].rule, ks_dma_rule_name(cases[i].rule));
        ks_dma_reports_clear(adapter);
    }
    ks_dma_segment three[3] = {{0x10000, 64}, {0x20000, 64}, {0x30000, 64}};
    ks_dma_descriptor descriptor = {.op = KS_DMA_OP_FILL, .dst = three, .dst_count = 3};
    uint64_t cookie;
    cr_assert_eq(ks_dma_device_submit(device, &descriptor, &cookie, NULL), STATUS_INVALID_PARAMETER);
    expect_only(adapter, KS_DMA_RULE_SEGMENT_COUNT, "three segments, the device takes two");
    ks_dma_device_destroy(device);
}

/* ---- device and frame rules -------------------------------------------------------------------- */

Test(dma_checker, device_access_outside_any_mapping)
{
    ks_dma_device *device = test_device("mask=32");
    ks_dma_adapter *adapter = ks_dma_device_adapter(device);
    ks_dma_segment nowhere = {0x10000000, 256};
    ks_dma_descriptor fill = {.op = KS_DMA_OP_FILL, .dst = &nowhere, .dst_count = 1, .pattern_seed = 1};
    ks_dma_completion completion;
    cr_assert_eq(ks_dma_device_run(device, &fill, &completion, 0, NULL), STATUS_SUCCESS);
    cr_assert_eq(completion.result, KS_DMA_RESULT_ACCESS_ERROR);
    cr_assert_eq(completion.bytes_done, 0);
    cr_assert_eq(completion.fault_bus_addr, 0x10000000);
    ks_dma_report report = expect_only(adapter, KS_DMA_RULE_DEVICE_ACCESS, "a write to unmapped memory");
    cr_assert_str_eq(report.call, "device engine");
    ks_dma_reports_clear(adapter);

    guarded buffer = guarded_alloc(PAGE, PAGE);
    ks_dma_addr bus = map_checked(adapter, buffer.user, PAGE, KS_DMA_TO_DEVICE);
    ks_dma_segment read_only = {bus, PAGE};
    fill.dst = &read_only;
    cr_assert_eq(ks_dma_device_run(device, &fill, &completion, 0, NULL), STATUS_SUCCESS);
    cr_assert_eq(completion.result, KS_DMA_RESULT_ACCESS_ERROR, "the device may not write a to-device mapping");
    report = expect_only(adapter, KS_DMA_RULE_DEVICE_ACCESS, "a write to a to-device mapping");
    cr_assert(report.has_mapping);
    cr_assert_not_null(strstr(report.message, "read-only for the device"), "%s", report.message);
    for (size_t i = 0; i < PAGE; i++)
        cr_assert_eq(buffer.user[i], 0, "nothing written at %zu", i);
    cr_assert(guards_intact(&buffer));
    ks_dma_unmap_single(adapter, bus, PAGE, KS_DMA_TO_DEVICE);
    ks_dma_device_destroy(device);
    guarded_free(&buffer);
}

Test(dma_checker, region_that_does_not_map_back)
{
    ks_dma_adapter *adapter = test_adapter("mask=32");
    ks_dma_addr bus;
    void *cpu = ks_dma_alloc_coherent(adapter, 4 * PAGE, &bus, NULL);
    ks_dma_segment off_by_a_page = {bus + PAGE, 4 * PAGE};
    ks_error err;
    cr_assert_eq(ks_dma_region_register(adapter, cpu, 4 * PAGE, PAGE, &off_by_a_page, 1, &err),
                 STATUS_INVALID_PARAMETER);
    ks_dma_report report = expect_only(adapter, KS_DMA_RULE_FRAME_MISMATCH, "a region one page off");
    cr_assert_eq(report.bus_addr, bus + PAGE);
    cr_assert_eq(report.cpu_addr, (uintptr_t)cpu);
    ks_dma_reports_clear(adapter);

    ks_dma_segment right = {bus, 4 * PAGE};
    cr_assert_eq(ks_dma_region_register(adapter, cpu, 4 * PAGE, PAGE, &right, 1, &err), STATUS_SUCCESS, "%s",
                 err.message);
    ks_dma_frame_info info;
    ks_dma_segment segment;
    cr_assert_eq(ks_dma_frame_lookup(adapter, (char *)cpu + 2 * PAGE, &info, &segment, 1, &err), STATUS_SUCCESS);
    cr_assert_eq(segment.bus_addr, bus + 2 * PAGE);
    test_expect_rules(adapter, 0, "a sound region");
    ks_dma_free_coherent(adapter, 4 * PAGE, cpu, bus);
    cr_assert_eq(ks_dma_frame_lookup(adapter, cpu, &info, &segment, 1, &err), STATUS_INVALID_PARAMETER,
                 "a region whose memory was freed");
    expect_only(adapter, KS_DMA_RULE_FRAME_MISMATCH, "lookup after the free");
    ks_dma_region_unregister(adapter, cpu);
    ks_dma_adapter_destroy(adapter);
}

/* ---- correct use is silent ------------------------------------------------------------------- */

static ks_dma_completion run_op(ks_dma_device *device, ks_dma_op op, ks_dma_addr bus, size_t bytes, uint64_t seed)
{
    ks_dma_segment segment = {bus, bytes};
    ks_dma_descriptor descriptor = {.op = op, .pattern_seed = seed};
    if (op == KS_DMA_OP_FILL) {
        descriptor.dst = &segment;
        descriptor.dst_count = 1;
    } else {
        descriptor.src = &segment;
        descriptor.src_count = 1;
    }
    ks_dma_completion completion;
    ks_error err;
    cr_assert_eq(ks_dma_device_run(device, &descriptor, &completion, 0, &err), STATUS_SUCCESS, "%s", err.message);
    cr_assert_eq(completion.result, KS_DMA_RESULT_OK, "%s", ks_dma_result_name(completion.result));
    return completion;
}

/* A driver doing everything right: capture and render through single mappings, an sg list,
 * a common buffer with a registered region. */
static void correct_driver(const char *spec)
{
    ks_dma_device *device = test_device(spec);
    ks_dma_adapter *adapter = ks_dma_device_adapter(device);
    enum { BYTES = 3 * 4096 + 512 };
    unsigned char *capture = page_buffer(BYTES), *render = page_buffer(BYTES);

    ks_dma_addr capture_bus = map_checked(adapter, capture, BYTES, KS_DMA_FROM_DEVICE);
    run_op(device, KS_DMA_OP_FILL, capture_bus, BYTES, 11);
    ks_dma_sync_single_for_cpu(adapter, capture_bus, BYTES, KS_DMA_FROM_DEVICE);
    cr_assert_eq(ks_dma_pattern_check(capture, BYTES, 11, 0), SIZE_MAX, "%s: captured data arrives", spec);
    ks_dma_sync_single_for_device(adapter, capture_bus, BYTES, KS_DMA_FROM_DEVICE);
    run_op(device, KS_DMA_OP_FILL, capture_bus, BYTES, 12);
    ks_dma_unmap_single(adapter, capture_bus, BYTES, KS_DMA_FROM_DEVICE);
    cr_assert_eq(ks_dma_pattern_check(capture, BYTES, 12, 0), SIZE_MAX, "%s: the unmap syncs for the CPU", spec);

    ks_dma_pattern_fill(render, BYTES, 13, 0);
    ks_dma_addr render_bus = map_checked(adapter, render, BYTES, KS_DMA_TO_DEVICE);
    cr_assert_eq(run_op(device, KS_DMA_OP_CHECKSUM, render_bus, BYTES, 0).checksum, ks_dma_checksum(render, BYTES),
                 "%s: the device reads what the CPU wrote before the map", spec);
    ks_dma_pattern_fill(render, BYTES, 14, 0);
    ks_dma_sync_single_for_device(adapter, render_bus, BYTES, KS_DMA_TO_DEVICE);
    cr_assert_eq(run_op(device, KS_DMA_OP_CHECKSUM, render_bus, BYTES, 0).checksum, ks_dma_checksum(render, BYTES),
                 "%s: and what it wrote before the sync", spec);
    ks_dma_unmap_single(adapter, render_bus, BYTES, KS_DMA_TO_DEVICE);

    /* A device without scatter/gather takes one-entry lists only. */
    uint32_t nents = ks_dma_adapter_description(adapter)->scatter_gather ? 2 : 1;
    ks_dma_sg sg[2] = {{.cpu = capture, .bytes = PAGE}, {.cpu = capture + PAGE, .bytes = PAGE}};
    uint32_t mapped = ks_dma_map_sg(adapter, sg, nents, KS_DMA_BIDIRECTIONAL, NULL);
    cr_assert_geq(mapped, 1);
    ks_dma_sync_sg_for_cpu(adapter, sg, nents, KS_DMA_BIDIRECTIONAL);
    ks_dma_sync_sg_for_device(adapter, sg, nents, KS_DMA_BIDIRECTIONAL);
    ks_dma_unmap_sg(adapter, sg, nents, KS_DMA_BIDIRECTIONAL);

    ks_dma_addr coherent_bus;
    void *coherent = ks_dma_alloc_coherent(adapter, 8 * PAGE, &coherent_bus, NULL);
    cr_assert_not_null(coherent);
    ks_dma_segment region = {coherent_bus, 8 * PAGE};
    cr_assert_eq(ks_dma_region_register(adapter, coherent, 8 * PAGE, 2 * PAGE, &region, 1, NULL), STATUS_SUCCESS);
    ks_dma_transfer_result result;
    ks_error err;
    cr_assert_eq(ks_dma_frame_transfer(device, KS_DMA_TRANSFER_CAPTURE, (char *)coherent + 2 * PAGE, NULL, 15, 0,
                                       &result, &err),
                 STATUS_SUCCESS, "%s: %s", spec, err.message);
    ks_dma_region_unregister(adapter, coherent);
    ks_dma_free_coherent(adapter, 8 * PAGE, coherent, coherent_bus);

    ks_dma_device_stop(device);
    test_expect_rules(adapter, 0, spec);
    ks_dma_device_destroy(device);
    free(capture);
    free(render);
}

Test(dma_checker, correct_use_is_silent_coherent)
{
    correct_driver("mask=64");
    correct_driver("mask=32,high=100");
}

Test(dma_checker, correct_use_is_silent_non_coherent)
{
    correct_driver("mask=64,coherent=0");
    correct_driver("mask=32,high=100,coherent=0");
}

Test(dma_checker, correct_use_is_silent_with_iommu)
{
    correct_driver("mask=32,high=100,iommu=1,sg=1");
    correct_driver("mask=64,high=50,iommu=1,coherent=0,sg=1,max_segs=4");
}

Test(dma_checker, correct_use_is_silent_on_constrained_devices)
{
    correct_driver("mask=24,high_boundary=16M,high=100,coherent=0");
    correct_driver("mask=32,sg=1,boundary=64K,max_seg=64K,max_segs=16,align=64,coherent=0");
}

Test(dma_checker, checker_off_reports_nothing_but_still_confines_the_device)
{
    ks_dma_device *device = test_device("mask=32,checker=0");
    ks_dma_adapter *adapter = ks_dma_device_adapter(device);
    ks_dma_unmap_single(adapter, 0x7000, 64, KS_DMA_TO_DEVICE);
    ks_dma_segment nowhere = {0x10000000, 256};
    ks_dma_descriptor fill = {.op = KS_DMA_OP_FILL, .dst = &nowhere, .dst_count = 1};
    ks_dma_completion completion;
    cr_assert_eq(ks_dma_device_run(device, &fill, &completion, 0, NULL), STATUS_SUCCESS);
    cr_assert_eq(completion.result, KS_DMA_RESULT_ACCESS_ERROR);
    cr_assert_eq(ks_dma_report_count(adapter), 0);
    ks_dma_device_destroy(device);
}
