/*
 * serial.c -- the counter behind serial.h: never reused, never 0. 2^64 serials do not run out
 * (at one per nanosecond, in 584 years).
 */
#include "serial.h"

#include <stdatomic.h>

static atomic_uint_fast64_t ks_serial_counter = 1;
_Thread_local uint64_t ks_serial_of_this_thread;

uint64_t ks_serial_next(void)
{
    return (uint64_t)atomic_fetch_add_explicit(&ks_serial_counter, 1, memory_order_relaxed);
}
