/*
 * test_dma_helpers.h -- what the DMA test files share: devices and adapters built from an
 * option string, report lookups, guarded buffers (guard bytes around the memory a test maps, to
 * prove nothing outside a mapping is ever written). Header-only: static functions, some unused
 * by a given file.
 */
#ifndef KS_TEST_DMA_HELPERS_H
#define KS_TEST_DMA_HELPERS_H

#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>

#include "dma/dma.h"

#define GUARD_BYTES 256u
#define GUARD_VALUE 0xA5u

static inline ks_dma_options test_dma_options(const char *spec)
{
    ks_dma_options options;
    ks_error err;
    ks_dma_options_init(&options);
    NTSTATUS status = ks_dma_options_parse(&options, spec, &err);
    cr_assert_eq(status, STATUS_SUCCESS, "options '%s': %s", spec, err.message);
    return options;
}

static inline ks_dma_adapter *test_adapter(const char *spec)
{
    ks_dma_options options = test_dma_options(spec);
    ks_dma_adapter *adapter = NULL;
    ks_error err;
    NTSTATUS status = ks_dma_adapter_create(&options, &adapter, &err);
    cr_assert_eq(status, STATUS_SUCCESS, "adapter '%s': %s", spec, err.message);
    return adapter;
}

static inline ks_dma_device *test_device(const char *spec)
{
    ks_dma_options options = test_dma_options(spec);
    ks_dma_device *device = NULL;
    ks_error err;
    NTSTATUS status = ks_dma_device_create(&options, &device, &err);
    cr_assert_eq(status, STATUS_SUCCESS, "device '%s': %s", spec, err.message);
    return device;
}

/* The first kept report of rule, or false. */
static inline bool test_find_report(ks_dma_adapter *adapter, ks_dma_rule rule, ks_dma_report *report)
{
    for (size_t i = 0; ks_dma_report_at(adapter, i, report); i++)
        if (report->rule == rule)
            return true;
    return false;
}

/* Asserts that exactly the rules in `expected` (a bit per ks_dma_rule) were reported. */
static inline void test_expect_rules(ks_dma_adapter *adapter, uint64_t expected, const char *what)
{
    for (int rule = 0; rule < KS_DMA_RULE_COUNT; rule++) {
        uint64_t count = ks_dma_report_count_rule(adapter, (ks_dma_rule)rule);
        bool wanted = (expected >> rule & 1u) != 0;
        ks_dma_report first;
        const char *message = ks_dma_report_at(adapter, 0, &first) ? first.message : "(none kept)";
        if (wanted)
            cr_assert_gt(count, 0, "%s: expected a %s report; first report: %s", what,
                         ks_dma_rule_name((ks_dma_rule)rule), message);
        else
            cr_assert_eq(count, 0, "%s: unexpected %s report(s): %s", what, ks_dma_rule_name((ks_dma_rule)rule),
                         message);
    }
}

#define RULE_BIT(rule) ((uint64_t)1 << (rule))

/* A buffer of bytes with GUARD_BYTES of GUARD_VALUE on each side, the user part at `align`. */
typedef struct guarded {
    unsigned char *block;
    unsigned char *user;
    size_t bytes;
} guarded;

static inline guarded guarded_alloc(size_t bytes, size_t align)
{
    guarded buffer;
    size_t block_bytes = bytes + 2u * GUARD_BYTES + align;
    buffer.block = aligned_alloc(4096, (block_bytes + 4095u) & ~(size_t)4095u);
    cr_assert_not_null(buffer.block);
    memset(buffer.block, GUARD_VALUE, block_bytes);
    buffer.user = (unsigned char *)(((uintptr_t)buffer.block + GUARD_BYTES + align - 1u) & ~(uintptr_t)(align - 1u));
    buffer.bytes = bytes;
    memset(buffer.user, 0, bytes);
    return buffer;
}

static inline bool guards_intact(const guarded *buffer)
{
    for (size_t i = 1; i <= GUARD_BYTES; i++)
        if (buffer->user[-(ptrdiff_t)i] != GUARD_VALUE || buffer->user[buffer->bytes + i - 1u] != GUARD_VALUE)
            return false;
    return true;
}

static inline void guarded_free(guarded *buffer)
{
    free(buffer->block);
    buffer->block = buffer->user = NULL;
}

#endif
