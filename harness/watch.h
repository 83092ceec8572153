/*
 * watch.h -- where the harness is inside an allocator's code, written for a supervisor in another
 * process to read when the allocator takes the process down (harness/cli/isolate.c).
 *
 * A watch is a small struct in memory shared with the supervisor (MAP_SHARED, made before the
 * fork). Around every call into an allocator's dispatch table -- InitializeAllocator, Allocate,
 * Free, DeleteAllocator -- and every access to a frame it returned, the caller marks its slot: the callback, the pin, the op
 * index, and a sequence number that moves on every entry. If the process then dies by a signal,
 * calls exit() or _exit(), stops returning, or grows past a memory limit, the supervisor reads
 * which callback of which allocator was running, on which pin, at which op, and says so. Under a
 * verifier the Allocate mark also covers the verifier's checks of the frame returned, so a
 * garbage pointer that faults in the pattern fill is charged to the Allocate that returned it.
 *
 * Cost: four plain stores and one release store per call (no system call, no clock read: the
 * supervisor tells a hang by a sequence number that stops moving). Benchmarks never use a watch.
 * A NULL watch or slot costs one branch.
 *
 * Threads: one slot per thread that calls allocators (slot 0: the main thread; the threaded
 * runner gives thread t slot t + 1). Only the thread owning a slot writes it.
 */
#ifndef KS_WATCH_H
#define KS_WATCH_H

#include <stdatomic.h>
#include <stdint.h>

#include "ksalloc.h"

#define KS_WATCH_SLOTS 72u      /* the main thread and up to 71 runner threads */
#define KS_WATCH_PINS 16u       /* allocator names kept for the first pins */
#define KS_WATCH_NAME_BYTES 64u /* an allocator's name, truncated */

typedef enum ks_watch_callback {
    KS_WATCH_IDLE = 0, /* not inside an allocator */
    KS_WATCH_INITIALIZE,
    KS_WATCH_ALLOCATE,
    KS_WATCH_FREE,
    KS_WATCH_DELETE,
    KS_WATCH_FRAME_ACCESS, /* the harness (TOUCH) or the emulated device (DMA) at a frame it returned */
    KS_WATCH_LOAD,         /* dlopen of a plugin: its constructors run */
    KS_WATCH_CALLBACK_COUNT
} ks_watch_callback;

typedef struct ks_watch_slot {
    _Atomic uint32_t callback; /* ks_watch_callback; written last on entry (release) */
    uint32_t pin;
    uint64_t op_index;
    _Atomic uint64_t sequence; /* entries so far: a supervisor sees progress by it */
} ks_watch_slot;

typedef struct ks_watch {
    _Atomic uint32_t finished; /* the command returned normally; exit_code is its code */
    int32_t exit_code;
    _Atomic uint32_t sanitizer_died; /* a sanitizer's report ended the process (its death callback) */
    char pin_allocator[KS_WATCH_PINS][KS_WATCH_NAME_BYTES]; /* named by the engine at open */
    ks_watch_slot slots[KS_WATCH_SLOTS];
} ks_watch;

/* Slot `index` of a watch, or NULL for no watch or an index past the slots. */
static inline ks_watch_slot *ks_watch_slot_at(ks_watch *watch, unsigned index)
{
    return watch != NULL && index < KS_WATCH_SLOTS ? &watch->slots[index] : NULL;
}

static inline void ks_watch_enter(ks_watch_slot *slot, ks_watch_callback callback, unsigned pin, uint64_t op_index)
{
    if (slot == NULL)
        return;
    slot->pin = pin;
    slot->op_index = op_index;
    atomic_store_explicit(&slot->sequence, atomic_load_explicit(&slot->sequence, memory_order_relaxed) + 1,
                          memory_order_relaxed);
    atomic_store_explicit(&slot->callback, (uint32_t)callback, memory_order_release);
}

static inline void ks_watch_leave(ks_watch_slot *slot)
{
    if (slot != NULL)
        atomic_store_explicit(&slot->callback, KS_WATCH_IDLE, memory_order_release);
}

/* Records which allocator pin `pin` runs (the first KS_WATCH_PINS pins). */
void ks_watch_name_pin(ks_watch *watch, unsigned pin, const char *allocator);

/* "Allocate", "InitializeAllocator", ... ("?" past the enum). */
const char *ks_watch_callback_name(ks_watch_callback callback);

#endif /* KS_WATCH_H */
