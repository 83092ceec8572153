/*
 * test_framing.c -- allocators/framing.h, the framing settlement every allocator shares: defaults,
 * limits, alignment floor, stride and block size, and that a refused framing is left untouched.
 */
#include <criterion/criterion.h>
#include <string.h>

#include "../allocators/framing.h"

static const ks_framing_rules rules = {
    .default_frames = 16,
    .default_frame_bytes = 100,
    .max_frame_bytes = 1u << 20,
    .max_align_bytes = 4096,
    .min_align_bytes = 8,
    .max_frames = 1000,
    .max_block_bytes = (size_t)1 << 24,
};

static KSALLOCATOR_FRAMING framing_of(ULONG frames, ULONG frame_bytes, ULONG mask)
{
    KSALLOCATOR_FRAMING framing;
    memset(&framing, 0, sizeof framing);
    framing.Frames = frames;
    framing.FrameSize = frame_bytes;
    framing.FileAlignment = mask;
    return framing;
}

Test(framing, defaults_floor_stride_and_block)
{
    KSALLOCATOR_FRAMING framing = framing_of(0, 0, 0);
    ks_framing_settled settled;
    cr_assert_eq(ks_framing_settle(&framing, &rules, &settled), STATUS_SUCCESS);
    cr_assert_eq(framing.Frames, 0, "settling leaves the framing alone");
    cr_assert_eq(settled.frames, 16);
    cr_assert_eq(settled.frame_bytes, 100);
    cr_assert_eq(settled.align_bytes, 8, "raised to min_align_bytes");
    cr_assert_eq(settled.stride_bytes, 104);
    cr_assert_eq(settled.block_bytes, 16 * 104);
    ks_framing_write_back(&framing, &settled);
    cr_assert_eq(framing.Frames, 16);
    cr_assert_eq(framing.FrameSize, 100);

    framing = framing_of(3, 5000, 4095);
    cr_assert_eq(ks_framing_settle(&framing, &rules, &settled), STATUS_SUCCESS);
    cr_assert_eq(settled.stride_bytes, 8192, "a frame rounds up to its alignment");
    cr_assert_eq(settled.block_bytes, 3 * 8192);
}

Test(framing, each_limit_refuses_with_its_status)
{
    const struct {
        KSALLOCATOR_FRAMING framing;
        NTSTATUS status;
    } cases[] = {
        {framing_of(1, 1, 0x30), STATUS_INVALID_PARAMETER},          /* not 2^k - 1 */
        {framing_of(1, 1, 8191), STATUS_INVALID_PARAMETER},          /* alignment over the limit */
        {framing_of(1, (1u << 20) + 1, 0), STATUS_INVALID_PARAMETER}, /* FrameSize over the limit */
        {framing_of(1001, 1, 0), STATUS_INVALID_PARAMETER},          /* Frames over the limit */
        {framing_of(1000, 1u << 20, 0), STATUS_INSUFFICIENT_RESOURCES}, /* 1000 MiB block */
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        KSALLOCATOR_FRAMING framing = cases[i].framing, before = cases[i].framing;
        ks_framing_settled settled;
        cr_assert_eq(ks_framing_settle(&framing, &rules, &settled), cases[i].status, "case %zu", i);
        cr_assert_eq(memcmp(&framing, &before, sizeof framing), 0, "case %zu: the framing was changed", i);
    }
}

Test(framing, the_largest_block_is_computed_without_wrapping)
{
    ks_framing_rules unlimited = {.default_frame_bytes = 1, .max_frame_bytes = (size_t)-1,
                                  .max_align_bytes = (size_t)1 << 32, .min_align_bytes = 1};
    KSALLOCATOR_FRAMING framing = framing_of(0xffffffffu, 0xffffffffu, 0xffffffffu);
    ks_framing_settled settled;
    cr_assert_eq(ks_framing_settle(&framing, &unlimited, &settled), STATUS_SUCCESS);
    cr_assert_eq(settled.stride_bytes, (size_t)1 << 32);
    cr_assert_eq(settled.block_bytes, ((size_t)1 << 32) * 0xffffffffu, "computed in 64 bits");
    unlimited.max_block_bytes = (size_t)1 << 40;
    cr_assert_eq(ks_framing_settle(&framing, &unlimited, &settled), STATUS_INSUFFICIENT_RESOURCES);
}
