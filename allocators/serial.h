/*
 * serial.h -- internal: serial numbers that are never reused, for telling threads (and
 * instances) apart where an address or a pthread_t may be reused once its owner is gone. One
 * process-wide counter, counting up from 1, so that 0 in a zeroed record matches nothing.
 *
 * ks_thread_serial is on the fast path of every thread-safe peer call (the bias check of
 * frame_set.c, jemalloc's per-thread records): a thread-local load and a compare once the
 * thread has its serial; only the first call of a thread takes the counter.
 */
#ifndef KS_SERIAL_H
#define KS_SERIAL_H

#include <stdint.h>

/* A serial no one has had before. Thread-safe: one relaxed atomic add. */
uint64_t ks_serial_next(void);

/* The calling thread's serial; 0 until its first ks_thread_serial. */
extern _Thread_local uint64_t ks_serial_of_this_thread;

static inline uint64_t ks_thread_serial(void)
{
    if (__builtin_expect(ks_serial_of_this_thread == 0, 0))
        ks_serial_of_this_thread = ks_serial_next();
    return ks_serial_of_this_thread;
}

#endif /* KS_SERIAL_H */
