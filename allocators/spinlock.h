/*
 * spinlock.h -- internal: the test-and-set spinlock allocators/ uses where a lock is held for a
 * handful of instructions (magazine's per-thread caches, the shards of the sharded frame set).
 *
 * Lock: one atomic exchange (acquire); unlock: one plain release store. A waiter spins on a
 * plain load (no cache-line ping-pong while the lock is held) with the CPU's pause hint, and
 * yields after KS_SPIN_BEFORE_YIELD rounds so that a holder preempted on a 2-core machine can run.
 * Not fair, not recursive. Only allocators/ includes it, by relative path.
 */
#ifndef KS_SPINLOCK_H
#define KS_SPINLOCK_H

#include <sched.h>
#include <stdatomic.h>
#include <stdbool.h>

#define KS_SPIN_BEFORE_YIELD 128u

typedef atomic_bool ks_spinlock;

static inline void ks_cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

static void __attribute__((noinline, unused)) ks_spin_lock_contended(ks_spinlock *lock)
{
    for (unsigned spins = 0;;) {
        while (atomic_load_explicit(lock, memory_order_relaxed)) {
            if (++spins < KS_SPIN_BEFORE_YIELD) {
                ks_cpu_relax();
            } else {
                spins = 0;
                sched_yield();
            }
        }
        if (!atomic_exchange_explicit(lock, true, memory_order_acquire))
            return;
    }
}

static inline void ks_spin_lock(ks_spinlock *lock)
{
    if (__builtin_expect(atomic_exchange_explicit(lock, true, memory_order_acquire), 0))
        ks_spin_lock_contended(lock);
}

/* True when the lock was free and is now held. */
static inline bool ks_spin_try_lock(ks_spinlock *lock)
{
    return !atomic_exchange_explicit(lock, true, memory_order_acquire);
}

static inline void ks_spin_unlock(ks_spinlock *lock)
{
    atomic_store_explicit(lock, false, memory_order_release);
}

#endif /* KS_SPINLOCK_H */
