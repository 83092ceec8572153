/*
 * test_buddy_tlsf.c -- white-box tests of the buddy and tlsf allocators: each self-check finds the
 * broken states it claims to, and the lazy paths (buddy's slots, both allocators' MUST_ALLOCATE
 * reservations on a shared heap, tlsf's unwritten list heads) keep their promises.
 *
 * The two allocator files are compiled into this test a second time, their entries renamed, so
 * that a test reaches the state behind a context (buddy_instance, tlsf_instance), corrupts one
 * thing, asserts that self_check fails and names it, then repairs it and asserts that self_check
 * passes again: the failure is the corruption's, not the test's. The catalogue's copies in
 * libksalloc.a are the same source; nothing here changes them.
 *
 * Laziness is measured with mincore(2) on a heap just mapped: which of its pages an
 * InitializeAllocator committed.
 */
#define ks_allocator_buddy test_buddy_entry
#define ks_allocator_tlsf test_tlsf_entry
#include "../allocators/buddy.c"
#include "../allocators/tlsf.c"
#undef ks_allocator_buddy
#undef ks_allocator_tlsf

#include <criterion/criterion.h>
#include <errno.h>

#include "framing_request.h"
#include "heap.h"

/* ---- helpers ---------------------------------------------------------------------------------- */

typedef struct pin {
    const ks_allocator_entry *entry;
    KSPIN kspin;
    KSALLOCATOR_FRAMING framing; /* as settled by InitializeAllocator */
    void *context;
} pin;

static NTSTATUS pin_open(pin *p, const ks_allocator_entry *entry, KSALLOCATOR_FRAMING framing, ks_heap *heap)
{
    memset(p, 0, sizeof *p);
    p->entry = entry;
    p->kspin.abi_version = KSALLOC_ABI_VERSION;
    p->kspin.name = "white-box";
    p->kspin.framing = framing;
    p->kspin.heap = heap;
    p->framing = framing;
    return entry->dispatch->InitializeAllocator(&p->kspin, &p->framing, &p->context);
}

static void pin_open_ok(pin *p, const ks_allocator_entry *entry, KSALLOCATOR_FRAMING framing, ks_heap *heap)
{
    NTSTATUS status = pin_open(p, entry, framing, heap);
    cr_assert_eq(status, STATUS_SUCCESS, "%s: InitializeAllocator returned %s", entry->name, ks_status_name(status));
}

static void *pin_allocate(pin *p)
{
    return p->entry->dispatch->Allocate(p->context);
}

static void pin_free(pin *p, void *frame)
{
    p->entry->dispatch->Free(p->context, frame);
}

static void pin_delete(pin *p)
{
    p->entry->dispatch->DeleteAllocator(p->context);
    p->context = NULL;
}

static uint64_t pin_counter(const pin *p, const char *name)
{
    ks_counter counters[32];
    size_t count = p->entry->counters(p->context, counters, 32);
    for (size_t i = 0; i < count; i++)
        if (strcmp(counters[i].name, name) == 0)
            return counters[i].value;
    cr_assert_fail("%s has no counter '%s'", p->entry->name, name);
    return 0;
}

static void expect_check_ok(const pin *p, const char *when)
{
    char why[256] = "";
    NTSTATUS status = p->entry->self_check(p->context, why, sizeof why);
    cr_assert_eq(status, STATUS_SUCCESS, "%s: self_check %s failed: %s", p->entry->name, when, why);
}

/* self_check fails, and its message contains needle. */
static void expect_check_fails(const pin *p, const char *needle, const char *corruption)
{
    char why[256] = "";
    NTSTATUS status = p->entry->self_check(p->context, why, sizeof why);
    cr_assert_neq(status, STATUS_SUCCESS, "%s: self_check missed %s", p->entry->name, corruption);
    cr_assert_not_null(strstr(why, needle), "%s: self_check on %s said '%s', expected '%s'", p->entry->name, corruption,
                       why, needle);
}

static ks_heap *heap_open(size_t bytes)
{
    ks_heap *heap = NULL;
    ks_error err;
    ks_error_clear(&err);
    cr_assert_eq(ks_heap_create("white-box", bytes, &heap, &err), STATUS_SUCCESS, "%s", err.message);
    return heap;
}

static void heap_close(ks_heap *heap)
{
    ks_error err;
    ks_error_clear(&err);
    cr_assert_eq(ks_heap_destroy(heap, &err), STATUS_SUCCESS, "%s", err.message);
}

/* Pages of the heap's region the system has committed. */
static size_t heap_resident_pages(const ks_heap *heap)
{
    size_t page_bytes = (size_t)sysconf(_SC_PAGESIZE);
    size_t pages = (heap->size_bytes + page_bytes - 1) / page_bytes;
    unsigned char *resident = malloc(pages);
    cr_assert_not_null(resident);
    cr_assert_eq(mincore(heap->base, pages * page_bytes, resident), 0, "mincore: %s", strerror(errno));
    size_t count = 0;
    for (size_t i = 0; i < pages; i++)
        count += resident[i] & 1u;
    free(resident);
    return count;
}

/* Takes frames until Allocate returns NULL (at most max_frames); returns how many. */
static size_t take_all(pin *p, void **frames, size_t max_frames)
{
    size_t count = 0;
    while (count < max_frames && (frames[count] = pin_allocate(p)) != NULL)
        count++;
    return count;
}

static void check_frames(void *const *frames, size_t count, size_t frame_bytes, size_t align_bytes, const char *what)
{
    for (size_t i = 0; i < count; i++) {
        uintptr_t at = (uintptr_t)frames[i];
        cr_assert(at != 0 && at % align_bytes == 0, "%s: frame %zu at %p, alignment %zu", what, i, frames[i],
                  align_bytes);
        for (size_t j = 0; j < i; j++) {
            uintptr_t other = (uintptr_t)frames[j];
            cr_assert(at + frame_bytes <= other || other + frame_bytes <= at, "%s: frames %zu and %zu overlap", what,
                      j, i);
        }
        memset(frames[i], (int)(i & 0xff), frame_bytes); /* ASan: the whole frame is ours */
    }
}

/* Another pin of the same allocator drains the heap with frames of other_framing; the promised
 * pin must still hand out all `promised_frames` of its promise -- aligned, disjoint, its
 * self-check passing as it goes -- and nothing beyond it, and Free must refill the promise.
 * Then both pins and the heap are closed. */
static void expect_promise_kept_on_a_drained_heap(pin *promised, ks_heap *heap, KSALLOCATOR_FRAMING other_framing,
                                                   unsigned promised_frames, size_t align_bytes)
{
    pin other;
    pin_open_ok(&other, promised->entry, other_framing, heap);
    static void *drained[1u << 14];
    size_t drained_count = take_all(&other, drained, 1u << 14);
    cr_assert_gt(drained_count, 0);

    void *frames[64];
    cr_assert_leq(promised_frames, 64);
    for (unsigned i = 0; i < promised_frames; i++) {
        frames[i] = pin_allocate(promised);
        cr_assert_not_null(frames[i], "promised frame %u of %u refused", i, promised_frames);
        if (i % 8 == 0)
            expect_check_ok(promised, "while serving the promise");
    }
    check_frames(frames, promised_frames, promised->framing.FrameSize, align_bytes, "set-aside frames");
    cr_assert_eq(pin_counter(promised, "frames_set_aside"), 0);
    cr_assert_null(pin_allocate(promised), "the heap is drained: nothing beyond the promise");
    for (unsigned i = 0; i < promised_frames; i++)
        pin_free(promised, frames[i]);
    cr_assert_eq(pin_counter(promised, "frames_set_aside"), promised_frames, "Free refills the promise");
    expect_check_ok(promised, "after the frames came back");
    for (size_t i = 0; i < drained_count; i++)
        pin_free(&other, drained[i]);
    pin_delete(&other);
    pin_delete(promised);
    heap_close(heap);
}

/* A 1 MiB heap whose free space is single 4 KiB frames between live ones of `other`: frames[0,
 * count) are what other took, the even ones given back. */
typedef struct scattered_heap {
    ks_heap *heap;
    pin other;
    void *frames[1024];
    size_t count;
} scattered_heap;

/* Opens the scene; returns the number of holes. */
static ULONG scattered_heap_open(scattered_heap *scene, const ks_allocator_entry *entry, ULONG align_mask)
{
    scene->heap = heap_open(1u << 20);
    pin_open_ok(&scene->other, entry, ks_test_framing(0, 4096, align_mask, false), scene->heap);
    scene->count = take_all(&scene->other, scene->frames, 1024);
    cr_assert_gt(scene->count, 16);
    for (size_t i = 0; i < scene->count; i += 2)
        pin_free(&scene->other, scene->frames[i]);
    return (ULONG)((scene->count + 1) / 2);
}

/* Gives other's frames back; the allocator must see its heap whole again. */
static void scattered_heap_close(scattered_heap *scene)
{
    for (size_t i = 1; i < scene->count; i += 2)
        pin_free(&scene->other, scene->frames[i]);
    expect_check_ok(&scene->other, "with the heap whole again");
    pin_delete(&scene->other);
    heap_close(scene->heap);
}

/* ---- buddy: the map ------------------------------------------------------------------------- */

typedef struct buddy_largest {
    uintptr_t addr;
    unsigned order;
    unsigned kind;
} buddy_largest;

static uintptr_t buddy_largest_visit(void *arg, uintptr_t addr, unsigned order, buddy_entry entry)
{
    buddy_largest *largest = arg;
    if (buddy_entry_kind(entry) == largest->kind && order > largest->order) {
        largest->addr = addr;
        largest->order = order;
    }
    return addr + ((uintptr_t)1 << order);
}

/* The largest block of a kind (BUDDY_FREE, BUDDY_LIVE...) in the buddy. */
static buddy_largest buddy_find_largest(buddy_state *state, unsigned kind)
{
    buddy_largest largest = {.addr = 0, .order = 0, .kind = kind};
    cr_assert_eq(buddy_walk(state, buddy_largest_visit, &largest, NULL, 0), STATUS_SUCCESS);
    cr_assert_neq(largest.addr, 0, "no block of kind %u", kind);
    return largest;
}

/* The interior check reads every entry of a block but its head, in one memcmp of the block with
 * itself shifted by one entry: a stale entry is found wherever it is -- first, last, middle, in a
 * free block or a live one -- and an interior of one repeated non-zero value too. */
Test(buddy, self_check_finds_a_stale_entry_anywhere_inside_a_block)
{
    ks_heap *heap = heap_open(1u << 20);
    pin p;
    pin_open_ok(&p, &test_buddy_entry, ks_test_framing(8, 4096, 63, false), heap);
    void *frame = pin_allocate(&p);
    cr_assert_not_null(frame);
    buddy_instance *instance = p.context;
    buddy_state *state = instance->state;
    buddy_entry stale = buddy_entry_make(BUDDY_LIVE, instance->block_order, instance->tag);
    expect_check_ok(&p, "before");

    const unsigned kinds[] = {BUDDY_FREE, BUDDY_LIVE};
    for (unsigned k = 0; k < 2; k++) {
        buddy_largest block = buddy_find_largest(state, kinds[k]);
        size_t head = buddy_index(state, block.addr), entries = (size_t)1 << (block.order - state->min_order);
        cr_assert_geq(entries, 4, "block of order %u too small to test", block.order);
        const size_t at[] = {head + 1, head + 2, head + entries / 2, head + entries - 2, head + entries - 1};
        for (size_t i = 0; i < sizeof at / sizeof at[0]; i++) {
            state->map[at[i]] = stale;
            expect_check_fails(&p, "inside block", "a stale map entry inside a block");
            state->map[at[i]] = 0;
            expect_check_ok(&p, "after the stale entry was cleared");
        }
        for (size_t i = head + 1; i < head + entries; i++)
            state->map[i] = stale;
        expect_check_fails(&p, "inside block", "a block's whole interior one repeated entry");
        memset(&state->map[head + 1], 0, (entries - 1) * sizeof *state->map);
        expect_check_ok(&p, "after the interior was cleared");
    }
    pin_free(&p, frame);
    pin_delete(&p);
    heap_close(heap);
}

/* ---- buddy: slots and lists ---------------------------------------------------------------------- */

/* Eight frames of one order from a shared buddy, then every other freed: four free blocks of that
 * order whose buddies are live, so two sit in the slots and two on the list. */
typedef struct buddy_scene {
    ks_heap *heap;
    pin p;
    void *frames[8];
    buddy_state *state;
    unsigned order;
} buddy_scene;

static void buddy_scene_open(buddy_scene *scene)
{
    scene->heap = heap_open(1u << 20);
    pin_open_ok(&scene->p, &test_buddy_entry, ks_test_framing(8, 4096, 63, false), scene->heap);
    for (unsigned i = 0; i < 8; i++) {
        scene->frames[i] = pin_allocate(&scene->p);
        cr_assert_not_null(scene->frames[i]);
    }
    for (unsigned i = 0; i < 8; i += 2)
        pin_free(&scene->p, scene->frames[i]);
    buddy_instance *instance = scene->p.context;
    scene->state = instance->state;
    scene->order = instance->block_order;
    cr_assert_neq(scene->state->slots[scene->order][0], 0);
    cr_assert_neq(scene->state->slots[scene->order][1], 0);
    cr_assert_not_null(scene->state->free_lists[scene->order], "the third free block of an order goes on the list");
    expect_check_ok(&scene->p, "on the scene");
}

static void buddy_scene_close(buddy_scene *scene)
{
    expect_check_ok(&scene->p, "after the repair");
    for (unsigned i = 1; i < 8; i += 2)
        pin_free(&scene->p, scene->frames[i]);
    expect_check_ok(&scene->p, "with everything free");
    pin_delete(&scene->p);
    heap_close(scene->heap);
}

Test(buddy, a_slot_holds_a_free_block_of_its_order_once)
{
    buddy_scene scene;
    buddy_scene_open(&scene);
    buddy_state *state = scene.state;
    uintptr_t *slots = state->slots[scene.order];
    uintptr_t kept = slots[1];

    slots[1] = slots[0];
    expect_check_fails(&scene.p, "in two slots", "one block in both slots of its order");
    slots[1] = (uintptr_t)scene.frames[1];
    expect_check_fails(&scene.p, "is not a free block of that order", "a live frame in a slot");
    slots[1] = kept;
    state->slots[scene.order - 1][0] = kept;
    expect_check_fails(&scene.p, "is not a free block of that order", "a free block in the slot of another order");
    state->slots[scene.order - 1][0] = 0;
    buddy_scene_close(&scene);
}

Test(buddy, slot_bitmap_agrees_with_the_slots)
{
    buddy_scene scene;
    buddy_scene_open(&scene);
    buddy_state *state = scene.state;
    unsigned empty_order = scene.order - 1; /* no free block that small: its slots are empty */
    cr_assert_eq(state->slots[empty_order][0] | state->slots[empty_order][1], 0);

    state->slotted_orders |= 1ull << empty_order;
    expect_check_fails(&scene.p, "slot bitmap bit", "a slot bit set over empty slots");
    state->slotted_orders &= ~(1ull << empty_order);
    state->slotted_orders &= ~(1ull << scene.order);
    expect_check_fails(&scene.p, "slot bitmap bit", "a slot bit cleared over full slots");
    state->slotted_orders |= 1ull << scene.order;
    state->slotted_orders |= 1ull << (state->top_order + 1);
    expect_check_fails(&scene.p, "outside", "a slot bit for an order no block has");
    state->slotted_orders &= ~(1ull << (state->top_order + 1));
    buddy_scene_close(&scene);
}

Test(buddy, every_free_block_is_in_a_slot_or_on_the_list_and_in_one_only)
{
    buddy_scene scene;
    buddy_scene_open(&scene);
    buddy_state *state = scene.state;
    uintptr_t *slots = state->slots[scene.order];
    uintptr_t kept = slots[0];
    uintptr_t listed = (uintptr_t)state->free_lists[scene.order];

    slots[0] = 0; /* a free block forgotten: in the map, in no slot, on no list */
    expect_check_fails(&scene.p, "free blocks in slots", "a free block lost from its slot");
    slots[0] = listed; /* the list's head in a slot as well */
    expect_check_fails(&scene.p, "also in a slot", "a listed block also in a slot");
    slots[0] = kept;
    state->nonempty_orders &= ~(1ull << scene.order);
    expect_check_fails(&scene.p, "bitmap bit", "a list bit cleared over a non-empty list");
    state->nonempty_orders |= 1ull << scene.order;
    buddy_scene_close(&scene);
}

/* An instance's own blocks have its frames' order: a live one exactly, a set-aside one at least. */
Test(buddy, own_blocks_have_the_frames_order)
{
    buddy_scene scene;
    buddy_scene_open(&scene);
    buddy_instance *instance = scene.p.context;
    size_t head = buddy_index(scene.state, (uintptr_t)scene.frames[1]);
    buddy_entry kept = scene.state->map[head];

    scene.state->map[head] = buddy_entry_make(BUDDY_LIVE, scene.order - 1, instance->tag);
    expect_check_fails(&scene.p, "is live, its frames' order", "a live frame of a smaller order");
    scene.state->map[head] = kept;
    buddy_scene_close(&scene);
}

/* ---- buddy: MUST_ALLOCATE on a shared heap ------------------------------------------------------ */

/* Blocks on a free list: the only blocks a buddy has written into (their list node). */
static size_t buddy_listed_blocks(const buddy_state *state)
{
    size_t count = 0;
    for (unsigned order = 0; order < BUDDY_ORDER_COUNT; order++)
        for (const buddy_free_node *node = state->free_lists[order]; node != NULL; node = node->next)
            count++;
    return count;
}

/* The reservation takes a block of 2^j frames per bit j of Frames, each in a slot of its order,
 * and writes into the heap only where a split's half had to go on a free list -- not into the 37
 * frames' blocks, as taking them one by one did -- and the frames come out of it aligned,
 * disjoint and all of them, however another pin drains the heap. */
Test(buddy, must_allocate_reserves_without_touching_and_keeps_its_promise)
{
    ks_heap *heap = heap_open(1u << 20);
    size_t resident_before = heap_resident_pages(heap);
    pin promised;
    pin_open_ok(&promised, &test_buddy_entry, ks_test_framing(37, 4096, 4095, true), heap);
    buddy_instance *instance = promised.context;
    size_t touched = heap_resident_pages(heap) - resident_before;
    size_t listed = buddy_listed_blocks(instance->state);
    cr_assert_leq(touched, listed, "InitializeAllocator wrote into %zu pages of the heap, %zu blocks are listed",
                  touched, listed);
    cr_assert_lt(touched, 8);
    cr_assert_eq(instance->frames_set_aside, 37);
    cr_assert_eq(__builtin_popcountll(instance->set_aside_slotted), 3, "37 = 32 + 4 + 1: three blocks");
    cr_assert_null(instance->set_aside, "three blocks of three orders: all in slots");
    expect_check_ok(&promised, "after the reservation");

    expect_promise_kept_on_a_drained_heap(&promised, heap, ks_test_framing(0, 64, 63, false), 37, 4096);
}

/* Where no block is large enough the reservation halves, down to single blocks: it succeeds
 * exactly when Frames blocks could be taken one by one. */
Test(buddy, must_allocate_takes_a_scattered_heap_block_by_block)
{
    static scattered_heap scene;
    ULONG holes = scattered_heap_open(&scene, &test_buddy_entry, 63);
    pin refused;
    cr_assert_eq(pin_open(&refused, &test_buddy_entry, ks_test_framing(holes + 1, 4096, 63, true), scene.heap),
                 STATUS_INSUFFICIENT_RESOURCES, "one frame more than the heap has free");
    pin promised;
    pin_open_ok(&promised, &test_buddy_entry, ks_test_framing(holes, 4096, 63, true), scene.heap);
    buddy_instance *instance = promised.context;
    cr_assert_eq(instance->frames_set_aside, holes);
    expect_check_ok(&promised, "after a reservation of scattered blocks");
    pin_delete(&promised);
    scattered_heap_close(&scene);
}

Test(buddy, self_check_follows_set_aside_blocks_of_many_frames)
{
    ks_heap *heap = heap_open(1u << 20);
    pin p;
    pin_open_ok(&p, &test_buddy_entry, ks_test_framing(6, 4096, 63, true), heap); /* 6 = 4 + 2: two blocks */
    buddy_instance *instance = p.context;
    buddy_state *state = instance->state;
    unsigned big = instance->block_order + 2, small = instance->block_order + 1;
    uintptr_t big_block = instance->set_aside_slots[big];
    cr_assert_neq(big_block, 0);
    cr_assert_neq(instance->set_aside_slots[small], 0);
    expect_check_ok(&p, "after the reservation");

    instance->set_aside_slots[big] = 0;
    expect_check_fails(&p, "set-aside slot bit", "a set-aside slot emptied under its bit");
    instance->set_aside_slots[big] = big_block;
    instance->set_aside_slotted |= 1ull << (big + 1);
    expect_check_fails(&p, "set-aside slot bit", "a set-aside bit over an empty slot");
    instance->set_aside_slotted &= ~(1ull << (big + 1));
    instance->set_aside_slotted |= 1ull << (instance->block_order - 1);
    expect_check_fails(&p, "outside", "a set-aside bit below the frames' order");
    instance->set_aside_slotted &= ~(1ull << (instance->block_order - 1));
    instance->set_aside_slots[small + 2] = instance->set_aside_slots[small];
    instance->set_aside_slotted |= 1ull << (small + 2);
    expect_check_fails(&p, "not its set-aside block of that order", "a set-aside block in the slot of another order");
    instance->set_aside_slots[small + 2] = 0;
    instance->set_aside_slotted &= ~(1ull << (small + 2));
    size_t head = buddy_index(state, big_block);
    state->map[head] = buddy_entry_make(BUDDY_SET_ASIDE, instance->block_order - 1, instance->tag);
    expect_check_fails(&p, "is set aside, its frames' order", "a set-aside block smaller than a frame");
    state->map[head] = buddy_entry_make(BUDDY_SET_ASIDE, big, instance->tag);
    instance->frames_set_aside++;
    expect_check_fails(&p, "set aside", "a set-aside count one frame off");
    instance->frames_set_aside--;
    expect_check_ok(&p, "after the repairs");

    void *frames[6];
    for (unsigned i = 0; i < 6; i++) {
        frames[i] = pin_allocate(&p);
        cr_assert_not_null(frames[i]);
        expect_check_ok(&p, "while splitting the set-aside blocks");
    }
    check_frames(frames, 6, 4096, 64, "buddy set-aside frames");
    pin_delete(&p); /* with frames live: DeleteAllocator gives them back */
    heap_close(heap);
}

/* Seeding records blocks without writing into them: a shared buddy over a heap just mapped
 * commits none of its pages until a block is handed out. */
Test(buddy, a_new_shared_buddy_writes_nothing_into_the_heap)
{
    ks_heap *heap = heap_open((1u << 20) + (5u << 12) + 192); /* not a power of two: many seeded blocks */
    size_t resident_before = heap_resident_pages(heap);
    pin p;
    pin_open_ok(&p, &test_buddy_entry, ks_test_framing(4, 64, 63, false), heap);
    cr_assert_eq(heap_resident_pages(heap), resident_before);
    buddy_instance *instance = p.context;
    cr_assert_eq(instance->state->nonempty_orders, 0, "seeded blocks went on the lists");
    expect_check_ok(&p, "after seeding");
    void *frame = pin_allocate(&p);
    cr_assert_not_null(frame);
    expect_check_ok(&p, "after the first split");
    pin_free(&p, frame);
    expect_check_ok(&p, "after merging back");
    cr_assert_eq(instance->state->nonempty_orders, 0, "merged back into slots");
    pin_delete(&p);
    heap_close(heap);
}

/* ---- tlsf: lists and bitmaps ---------------------------------------------------------------------- */

/* A list exists where its bit is set; the head of an empty list is never read, so a garbage head
 * there is no corruption, and Allocate and Free do not trip over one. */
Test(tlsf, heads_of_empty_lists_are_never_read)
{
    pin p;
    pin_open_ok(&p, &test_tlsf_entry, ks_test_framing(16, 100, 15, false), NULL);
    tlsf_control *control = ((tlsf_instance *)p.context)->control;
    for (unsigned fl = 0; fl < TLSF_FL_COUNT; fl++)
        for (unsigned sl = 0; sl < TLSF_SL_COUNT; sl++)
            if (((control->sl_bitmap[fl] >> sl) & 1u) == 0)
                control->heads[fl][sl] = (tlsf_block *)(uintptr_t)0xdeadbeef0;
    expect_check_ok(&p, "with garbage in the heads of empty lists");
    void *frames[16];
    for (unsigned round = 0; round < 3; round++) {
        for (unsigned i = 0; i < 16; i++) {
            frames[i] = pin_allocate(&p);
            cr_assert_not_null(frames[i]);
        }
        check_frames(frames, 16, 100, 16, "tlsf frames");
        expect_check_ok(&p, "with every frame live");
        for (unsigned i = 0; i < 16; i += 2)
            pin_free(&p, frames[i]);
        for (unsigned i = 1; i < 16; i += 2)
            pin_free(&p, frames[i]);
        expect_check_ok(&p, "with every frame free");
    }
    pin_delete(&p);
}

Test(tlsf, self_check_holds_the_bitmaps_to_the_lists)
{
    pin p;
    pin_open_ok(&p, &test_tlsf_entry, ks_test_framing(16, 100, 15, false), NULL);
    tlsf_control *control = ((tlsf_instance *)p.context)->control;
    void *frame = pin_allocate(&p);
    cr_assert_not_null(frame);
    cr_assert_neq(control->fl_bitmap, 0);
    unsigned fl = (unsigned)__builtin_ctz(control->fl_bitmap);
    unsigned sl = (unsigned)__builtin_ctz(control->sl_bitmap[fl]);
    unsigned empty_sl = (sl + 1) % TLSF_SL_COUNT;
    cr_assert_eq((control->sl_bitmap[fl] >> empty_sl) & 1u, 0, "the test wants one list in first level %u", fl);
    expect_check_ok(&p, "before");

    control->sl_bitmap[fl] |= 1u << empty_sl; /* a list named with no head */
    control->heads[fl][empty_sl] = NULL;
    expect_check_fails(&p, "is set but its list is empty", "an sl bit over an empty list");
    control->heads[fl][empty_sl] = (tlsf_block *)(uintptr_t)0x10; /* ... or with a garbage head */
    expect_check_fails(&p, "is not a free block of that range", "an sl bit over a garbage head");
    control->sl_bitmap[fl] &= ~(1u << empty_sl);
    control->sl_bitmap[fl] &= ~(1u << sl); /* a list's blocks hidden from Allocate */
    control->fl_bitmap &= control->sl_bitmap[fl] != 0 ? ~0u : ~(1u << fl);
    expect_check_fails(&p, "lists hold", "a non-empty list whose bit was cleared");
    control->sl_bitmap[fl] |= 1u << sl;
    expect_check_fails(&p, "fl_bitmap bit", "an fl bit cleared over a non-empty second level");
    control->fl_bitmap |= 1u << fl;
    cr_assert_lt(fl + 1, TLSF_FL_COUNT);
    control->fl_bitmap |= 1u << (fl + 1);
    expect_check_fails(&p, "fl_bitmap bit", "an fl bit set over an empty second level");
    control->fl_bitmap &= ~(1u << (fl + 1));
    expect_check_ok(&p, "after the repairs");
    pin_free(&p, frame);
    pin_delete(&p);
}

/* ---- tlsf: MUST_ALLOCATE on a shared heap ------------------------------------------------------------ */

/* The reservation is one run of Frames slots: a few headers written, not one per frame, and the
 * frames come out of it aligned, disjoint and all of them, however another pin drains the heap. */
Test(tlsf, must_allocate_reserves_a_run_and_keeps_its_promise)
{
    ks_heap *heap = heap_open(4u << 20);
    pin promised;
    size_t resident_before = heap_resident_pages(heap);
    pin_open_ok(&promised, &test_tlsf_entry, ks_test_framing(64, 4096, 4095, true), heap);
    size_t touched = heap_resident_pages(heap) - resident_before;
    /* The first block's header and sentinel, the run's header and link, the free block after the
     * run (its header and links may straddle two pages): 6 at most, where it was 64 and more. */
    cr_assert_leq(touched, 6, "InitializeAllocator wrote into %zu pages of the heap for 64 frames", touched);
    tlsf_instance *instance = promised.context;
    cr_assert_eq(instance->frames_set_aside, 64);
    cr_assert_eq(tlsf_set_aside_frames(instance, instance->set_aside), 64, "one run of 64 slots");
    expect_check_ok(&promised, "after the reservation");

    expect_promise_kept_on_a_drained_heap(&promised, heap, ks_test_framing(0, 512, 15, false), 64, 4096);
}

/* Where no free block holds a run the reservation halves, down to frames taken one by one: it
 * succeeds exactly when those would. */
Test(tlsf, must_allocate_takes_a_scattered_heap_frame_by_frame)
{
    static scattered_heap scene;
    ULONG holes = scattered_heap_open(&scene, &test_tlsf_entry, 15);
    pin refused;
    cr_assert_eq(pin_open(&refused, &test_tlsf_entry, ks_test_framing(holes + 1, 4096, 15, true), scene.heap),
                 STATUS_INSUFFICIENT_RESOURCES, "one frame more than the heap has room for");
    expect_check_ok(&scene.other, "after a refused reservation");
    pin promised;
    pin_open_ok(&promised, &test_tlsf_entry, ks_test_framing(holes, 4096, 15, true), scene.heap);
    cr_assert_eq(((tlsf_instance *)promised.context)->frames_set_aside, holes);
    expect_check_ok(&promised, "after a reservation of scattered frames");
    pin_delete(&promised);
    scattered_heap_close(&scene);
}

Test(tlsf, self_check_follows_set_aside_runs)
{
    ks_heap *heap = heap_open(1u << 20);
    pin p;
    pin_open_ok(&p, &test_tlsf_entry, ks_test_framing(8, 1000, 255, true), heap);
    tlsf_instance *instance = p.context;
    tlsf_block *run = instance->set_aside;
    cr_assert_not_null(run);
    cr_assert_eq(tlsf_set_aside_frames(instance, run), 8);
    expect_check_ok(&p, "after the reservation");

    size_t align_bytes = instance->align_bytes;
    uintptr_t payload = tlsf_payload(run);
    instance->align_bytes = (payload & (0 - payload)) << 1; /* the run's payload off the pin's alignment */
    expect_check_fails(&p, "payload is not aligned", "a run that would hand out misaligned frames");
    instance->align_bytes = align_bytes;
    instance->frames_set_aside--;
    expect_check_fails(&p, "counts", "a set-aside count one frame short of the run");
    instance->frames_set_aside++;
    run->next_free = run; /* the run listed twice */
    expect_check_fails(&p, "is not its set-aside block", "a set-aside list through one run twice");
    run->next_free = NULL;
    run->word &= ~(uint64_t)TLSF_SET_ASIDE; /* the headers count it live now */
    expect_check_fails(&p, "counts", "a listed run no longer flagged set aside");
    run->word |= TLSF_SET_ASIDE;
    expect_check_ok(&p, "after the repairs");

    void *frames[8];
    for (unsigned i = 0; i < 8; i++) {
        frames[i] = pin_allocate(&p);
        cr_assert_not_null(frames[i]);
        expect_check_ok(&p, "while carving the run");
    }
    check_frames(frames, 8, 1000, 256, "tlsf frames carved from a run");
    for (unsigned i = 0; i < 4; i++)
        pin_free(&p, frames[i]);
    expect_check_ok(&p, "with half the frames given back to the set-aside");
    pin_delete(&p); /* with frames live and set aside */
    heap_close(heap);
}
