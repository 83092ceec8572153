/*
 * test_frame_set.c -- the live-frame set of allocators/frame_set.c against a brute-force model.
 *
 * The set is what lets `system`, `lookaside`, `jemalloc` and `tcmalloc` release live frames at
 * DeleteAllocator and ignore foreign Frees, so a lost or phantom entry is a leak or a double
 * free there. Random inserts and removes (clustered addresses, the worst case for linear
 * probing with backward-shift deletion) are checked after every step against a plain array,
 * through contains, the walk and ks_frame_set_check; a corrupted table must make the check fail.
 */
#include <criterion/criterion.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../allocators/frame_set.h"

#define MODEL_FRAMES 600u

static uint64_t xorshift(uint64_t *state)
{
    uint64_t x = *state;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return *state = x;
}

static bool model_has(const uintptr_t *model, size_t count, uintptr_t frame)
{
    for (size_t i = 0; i < count; i++)
        if (model[i] == frame)
            return true;
    return false;
}

static void assert_same(const ks_frame_set *set, const uintptr_t *model, size_t count, size_t step)
{
    char why[200] = "";
    cr_assert(ks_frame_set_check(set, 64, "test", why, sizeof why), "step %zu: %s", step, why);
    cr_assert_eq(set->count, count, "step %zu", step);
    size_t walked = 0, cursor = 0;
    for (void *frame; (frame = ks_frame_set_next(set, &cursor)) != NULL; walked++)
        cr_assert(model_has(model, count, (uintptr_t)frame), "step %zu: walk found %p, not live", step, frame);
    cr_assert_eq(walked, count, "step %zu: the walk visits every frame once", step);
}

Test(frame_set, random_inserts_and_removes_match_a_model)
{
    ks_frame_set set;
    cr_assert(ks_frame_set_init(&set, KS_FRAME_SET_MIN_CAPACITY));
    uintptr_t model[MODEL_FRAMES];
    size_t count = 0;
    uint64_t rng = 0x9e3779b97f4a7c15u;
    for (size_t step = 0; step < 20000; step++) {
        /* 1024 candidate frames, 64-byte aligned and adjacent: home slots collide often. */
        uintptr_t frame = (uintptr_t)0x7f0000000000u + (uintptr_t)(xorshift(&rng) % 1024u) * 64u;
        bool live = model_has(model, count, frame);
        cr_assert_eq(ks_frame_set_contains(&set, (void *)frame), live, "step %zu", step);
        if (!live && count < MODEL_FRAMES && (xorshift(&rng) & 1)) {
            cr_assert(ks_frame_set_insert(&set, (void *)frame), "step %zu", step);
            model[count++] = frame;
        } else if (live) {
            cr_assert(ks_frame_set_remove(&set, (void *)frame), "step %zu", step);
            for (size_t i = 0; i < count; i++)
                if (model[i] == frame) {
                    model[i] = model[--count];
                    break;
                }
            cr_assert_not(ks_frame_set_remove(&set, (void *)frame), "step %zu: removed twice", step);
        }
        if (step % 97 == 0)
            assert_same(&set, model, count, step);
    }
    assert_same(&set, model, count, 20000);
    cr_assert_not(ks_frame_set_contains(&set, NULL));
    cr_assert_not(ks_frame_set_remove(&set, NULL));
    cr_assert_leq(set.count * 2, set.capacity, "the table stays at most half full");
    ks_frame_set_destroy(&set);
    ks_frame_set_destroy(&set); /* twice is safe */
}

Test(frame_set, reserve_makes_inserts_succeed_and_bad_capacity_is_refused)
{
    ks_frame_set set;
    cr_assert_not(ks_frame_set_init(&set, 12), "12 is not a power of two");
    cr_assert_null(set.slots);
    cr_assert(ks_frame_set_insert(&set, (void *)0x1000), "an insert gives an uninitialised set a table");
    cr_assert(ks_frame_set_contains(&set, (void *)0x1000));
    cr_assert(ks_frame_set_reserve(&set, 1000));
    size_t capacity = set.capacity;
    cr_assert_geq(capacity, 2002u);
    for (uintptr_t i = 1; i <= 1000; i++)
        cr_assert(ks_frame_set_insert(&set, (void *)(0x1000 + i * 4096)));
    cr_assert_eq(set.capacity, capacity, "no growth after a covering reserve");
    cr_assert_eq(ks_frame_set_table_bytes(&set), capacity * sizeof(uintptr_t));
    ks_frame_set_destroy(&set);
}

/* The check is a self-check of the allocators that use the set: it must see a broken table. */
Test(frame_set, check_catches_a_corrupted_table)
{
    ks_frame_set set;
    char why[200];
    cr_assert(ks_frame_set_init(&set, 64));
    for (uintptr_t i = 1; i <= 20; i++)
        cr_assert(ks_frame_set_insert(&set, (void *)(i * 256)));
    cr_assert(ks_frame_set_check(&set, 256, "t", why, sizeof why), "%s", why);
    cr_assert_not(ks_frame_set_check(&set, 512, "t", why, sizeof why), "frames at 256-byte steps are not 512-aligned");

    set.count++;
    cr_assert_not(ks_frame_set_check(&set, 256, "t", why, sizeof why), "a wrong count");
    cr_assert_not_null(strstr(why, "t:"), "%s", why);
    set.count--;

    size_t cursor = 0;
    ks_frame_set_next(&set, &cursor);
    size_t slot = cursor - 1, other = (slot + 1) & (set.capacity - 1);
    while (set.slots[other] != 0)
        other = (other + 1) & (set.capacity - 1);
    set.slots[other] = set.slots[slot]; /* the same frame listed twice */
    set.count++;
    cr_assert_not(ks_frame_set_check(&set, 256, "t", why, sizeof why), "a duplicate entry");
    ks_frame_set_destroy(&set);
}

/* Release is the owners' Free: a frame not in the set is counted, the first address kept, and
 * the check reports it; the record survives the table growing. */
Test(frame_set, foreign_releases_are_counted_and_reported_across_growth)
{
    ks_frame_set set;
    char why[200];
    cr_assert(ks_frame_set_init(&set, KS_FRAME_SET_MIN_CAPACITY));
    cr_assert(ks_frame_set_insert(&set, (void *)0x1000));
    cr_assert(ks_frame_set_release(&set, (void *)0x1000));
    cr_assert(ks_frame_set_check(&set, 64, "t", why, sizeof why), "%s", why);
    cr_assert_not(ks_frame_set_release(&set, (void *)0x1000), "a second release is foreign");
    cr_assert_not(ks_frame_set_release(&set, (void *)0x2040));
    for (uintptr_t i = 1; i <= 100; i++) /* grows the table several times */
        cr_assert(ks_frame_set_insert(&set, (void *)(0x10000 + i * 64)));
    cr_assert_eq(set.foreign_releases, 2);
    cr_assert_eq(set.first_foreign_release, 0x1000);
    cr_assert_not(ks_frame_set_check(&set, 64, "t", why, sizeof why));
    cr_assert_not_null(strstr(why, "t: 2 Free call(s) of a frame not live in this instance, first 0x1000"), "%s", why);
    ks_frame_set_destroy(&set);
}
