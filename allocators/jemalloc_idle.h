/*
 * jemalloc_idle.h -- `jemalloc`'s idle arenas, for a caller that wants their memory back: the
 * benchmark, before each run, so that one run's peak RSS is not an earlier run's parked arenas;
 * the tests. jemalloc.c's top comment says what is parked and why. Not part of the plugin ABI.
 */
#ifndef KS_JEMALLOC_IDLE_H
#define KS_JEMALLOC_IDLE_H

/* Destroys every parked arena and returns how many it destroyed. Thread-safe; open instances
 * keep theirs. */
unsigned ks_jemalloc_idle_trim(void);

#endif /* KS_JEMALLOC_IDLE_H */
