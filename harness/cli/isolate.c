/*
 * isolate.c -- `run`, `replay` and `dma` run the allocator under test in a child process, so that
 * whatever it does -- a crash, an abort, a trap, exit() or _exit(), a hang, memory without end --
 * the harness survives and reports it.
 *
 * Design. Before anything of the command runs, the CLI maps a watch (harness/watch.h) shared with
 * a child and forks. The child runs the command as it always ran (it loads the plugin, opens the
 * engine or the threaded runner, which mark every call into the allocator in the watch) and, when
 * the command returns, stores its exit code and a `finished` flag in the watch and exits with it.
 * The parent only waits and watches, polling every few milliseconds (1 ms at first, backing off
 * to 25 ms, so a short command is not held up):
 *   - the child exited after `finished`: its exit code is the command's;
 *   - it died by a signal, or exited without `finished` (the allocator called exit() or _exit()):
 *     a finding, naming the allocator, the callback in progress, the pin and the op index, the
 *     signal or the status, and the command that reproduces it -- exit 1;
 *   - a callback made no progress (the slot's sequence number did not move) for --timeout
 *     seconds: the child is killed, a finding, exit 1;
 *   - its resident memory passed --rss-limit-mb (read from /proc/<pid>/statm, as libFuzzer's
 *     -rss_limit_mb watches its own process): killed, a finding, exit 1;
 *   - the whole command passed --run-timeout: killed, a finding (exit 1 if a callback was in
 *     progress, else exit 3: the harness itself did not finish).
 * Every 5 s of a long command the parent also prints a progress line from the watch (calls into
 * the allocator so far, the main thread's op), in place on a terminal.
 * A death outside any callback is not charged to the allocator (exit 3, with what the watch saw
 * last), since it may be the harness's own bug; --no-isolate runs the command in this process,
 * for a debugger.
 *
 * The defaults are libFuzzer's where it has one: 2048 MiB of RSS; a callback that does not return
 * within 25 s is taken as hung (libFuzzer's -timeout is 1200 s for a whole input, which holds
 * thousands of calls; no single Allocate of a sane allocator takes a second). No run timeout.
 *
 * Cost: one fork per command (about a millisecond) and a few stores per call into the allocator;
 * `make bench` never goes through here (bench/ calls allocators directly).
 */
#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"
#include "watch.h"

#define ISOLATE_DEFAULT_CALLBACK_TIMEOUT_S 25.0
#define ISOLATE_DEFAULT_RSS_LIMIT_MB 2048u
#define ISOLATE_MAX_TIMEOUT_S 86400.0 /* a day */
#define ISOLATE_MAX_RSS_LIMIT_MB (UINT64_C(1) << 30)
#define ISOLATE_POLL_FIRST_NS 1000000u   /* 1 ms */
#define ISOLATE_POLL_MAX_NS 25000000u    /* 25 ms */
#define ISOLATE_PROGRESS_EVERY_NS 5000000000u /* a long command says it is alive every 5 s */

static ks_watch *current_watch;

/* Under a sanitizer (sanitizer/common_interface_defs.h, declared here because Debian's gcc ships
 * no sanitizer headers): called when a report is about to end the process. A crash the sanitizer
 * catches (SEGV, FPE, a bad access) then ends in exit status 1 rather than a signal; the callback
 * tells the supervisor it was a crash. Weak: absent in plain builds. */
void __sanitizer_set_death_callback(void (*callback)(void)) __attribute__((weak));

static void note_sanitizer_death(void)
{
    if (current_watch != NULL)
        atomic_store(&current_watch->sanitizer_died, 1u);
}

ks_watch *ks_cli_watch(void)
{
    return current_watch;
}

int ks_cli_resolve_exit_code(const char *spec, const ks_error *err)
{
    bool plugin = strncmp(spec, "plugin:", 7) == 0;
    return !plugin && err->status == STATUS_OBJECT_NAME_NOT_FOUND ? KS_EXIT_USAGE : KS_EXIT_ERROR;
}

NTSTATUS ks_cli_resolve_watched(const char *spec, unsigned pin, const ks_allocator_entry **entry, ks_plugin **plugin,
                                ks_error *err)
{
    ks_watch_slot *slot = ks_watch_slot_at(current_watch, 0);
    ks_watch_name_pin(current_watch, pin, spec);
    ks_watch_enter(slot, KS_WATCH_LOAD, pin, 0);
    NTSTATUS status = ks_allocator_resolve(spec, entry, plugin, err);
    ks_watch_leave(slot);
    return status;
}

void ks_cli_isolation_defaults(ks_cli_isolation *isolation)
{
    *isolation = (ks_cli_isolation){.enabled = true,
                                    .callback_timeout_s = ISOLATE_DEFAULT_CALLBACK_TIMEOUT_S,
                                    .run_timeout_s = 0.0,
                                    .rss_limit_mb = ISOLATE_DEFAULT_RSS_LIMIT_MB};
}

static bool parse_seconds(const char *cmd, const char *flag, const char *text, double *seconds)
{
    char *end = NULL;
    errno = 0;
    double value = strtod(text, &end);
    if (text[0] == '\0' || end == NULL || *end != '\0' || errno != 0 || !(value >= 0.0) ||
        value > ISOLATE_MAX_TIMEOUT_S) {
        fprintf(stderr, "ksalloc %s: %s: '%s' is not a number of seconds from 0 (none) to %.0f\n", cmd, flag, text,
                ISOLATE_MAX_TIMEOUT_S);
        return false;
    }
    *seconds = value;
    return true;
}

int ks_cli_isolation_parse(const char *cmd, int *argc, char **argv, ks_cli_isolation *isolation)
{
    int kept = 1;
    for (int index = 1; index < *argc; index++) {
        const char *arg = argv[index];
        const char *flags[] = {"--timeout", "--run-timeout", "--rss-limit-mb"};
        size_t which = sizeof flags / sizeof flags[0];
        const char *value = NULL;
        if (strcmp(arg, "--no-isolate") == 0) {
            isolation->enabled = false;
            continue;
        }
        if (strcmp(arg, "--") == 0) {
            while (index < *argc)
                argv[kept++] = argv[index++];
            break;
        }
        for (size_t flag = 0; flag < sizeof flags / sizeof flags[0]; flag++) {
            size_t length = strlen(flags[flag]);
            if (strncmp(arg, flags[flag], length) != 0)
                continue;
            if (arg[length] == '=') {
                which = flag;
                value = arg + length + 1;
            } else if (arg[length] == '\0') {
                which = flag;
                if (index + 1 >= *argc) {
                    fprintf(stderr, "ksalloc %s: %s needs a value\n", cmd, flags[flag]);
                    return KS_EXIT_USAGE;
                }
                value = argv[++index];
            }
        }
        if (which == sizeof flags / sizeof flags[0]) {
            argv[kept++] = argv[index];
            continue;
        }
        if (which == 0 && !parse_seconds(cmd, "--timeout", value, &isolation->callback_timeout_s))
            return KS_EXIT_USAGE;
        if (which == 1 && !parse_seconds(cmd, "--run-timeout", value, &isolation->run_timeout_s))
            return KS_EXIT_USAGE;
        if (which == 2 && !ks_cli_parse_u64(cmd, "--rss-limit-mb", value, ISOLATE_MAX_RSS_LIMIT_MB,
                                            &isolation->rss_limit_mb))
            return KS_EXIT_USAGE;
    }
    argv[kept] = NULL;
    *argc = kept;
    return -1;
}

static uint64_t monotonic_ns(void)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (uint64_t)now.tv_sec * 1000000000u + (uint64_t)now.tv_nsec;
}

/* Resident bytes of a process, from /proc/<pid>/statm (0 when it cannot be read). */
static uint64_t resident_bytes(pid_t pid)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/statm", (int)pid);
    FILE *statm = fopen(path, "r");
    if (statm == NULL)
        return 0;
    unsigned long long size_pages = 0, resident_pages = 0;
    int fields = fscanf(statm, "%llu %llu", &size_pages, &resident_pages);
    fclose(statm);
    long page_bytes = sysconf(_SC_PAGESIZE);
    return fields == 2 && page_bytes > 0 ? (uint64_t)resident_pages * (uint64_t)page_bytes : 0;
}

/* What each watch slot was seen doing, to tell a callback that stopped moving. */
typedef struct slot_seen {
    uint32_t callback;
    uint64_t sequence;
    uint64_t since_ns;
} slot_seen;

/* The first slot inside a callback (the main thread's first), or -1. */
static int busy_slot(const ks_watch *watch)
{
    for (unsigned index = 0; index < KS_WATCH_SLOTS; index++)
        if (atomic_load_explicit(&watch->slots[index].callback, memory_order_acquire) != KS_WATCH_IDLE)
            return (int)index;
    return -1;
}

static const char *pin_allocator(const ks_watch *watch, unsigned pin, const char *fallback)
{
    return pin < KS_WATCH_PINS && watch->pin_allocator[pin][0] != '\0' ? watch->pin_allocator[pin] : fallback;
}

/* "in Allocate of allocator 'x' on pin 2 at op 17 (thread slot 3)" into where. */
static void describe_slot(const ks_watch *watch, int index, const char *allocator, char *where, size_t where_bytes)
{
    const ks_watch_slot *slot = &watch->slots[index];
    ks_watch_callback callback = (ks_watch_callback)atomic_load(&slot->callback);
    const char *name = pin_allocator(watch, slot->pin, allocator);
    char thread[32] = "";
    if (index > 0)
        snprintf(thread, sizeof thread, ", thread %d", index - 1);
    snprintf(where, where_bytes, "during %s of allocator '%s' on pin %u at op %" PRIu64 "%s",
             ks_watch_callback_name(callback), name, slot->pin, slot->op_index, thread);
}

static void print_reproducer(int argc, char **argv)
{
    fputs("reproduce:", stderr);
    for (int index = 0; index < argc; index++) {
        const char *arg = argv[index];
        bool plain = arg[0] != '\0' && strspn(arg, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
                                                   "-_=./:,+%@") == strlen(arg);
        if (plain) {
            fprintf(stderr, " %s", arg);
            continue;
        }
        fputs(" '", stderr);
        for (const char *c = arg; *c != '\0'; c++)
            *c == '\'' ? fputs("'\\''", stderr) : fputc(*c, stderr);
        fputc('\'', stderr);
    }
    fputs("   (add --no-isolate to run it in one process, e.g. under gdb)\n", stderr);
}

typedef enum stop_reason { STOP_NONE, STOP_HANG, STOP_RSS, STOP_RUN_TIMEOUT } stop_reason;

/* Progress of a long command, read off the watch: on a terminal one line rewritten in place (and
 * cleared at the end), otherwise a plain line each time, so a CI log shows the run is alive. */
static void print_progress(const char *cmd, const ks_watch *watch, uint64_t elapsed_ns, bool live)
{
    uint64_t calls = 0;
    for (unsigned index = 0; index < KS_WATCH_SLOTS; index++)
        calls += atomic_load_explicit(&watch->slots[index].sequence, memory_order_relaxed);
    const ks_watch_slot *main_slot = &watch->slots[0];
    char line[160];
    snprintf(line, sizeof line, "ksalloc %s: %.0f s, %" PRIu64 " calls into the allocator; the main thread at op %" PRIu64,
             cmd, (double)elapsed_ns / 1e9, calls, main_slot->op_index);
    if (live)
        fprintf(stderr, "\r%-100.100s", line);
    else
        fprintf(stderr, "%s\n", line);
}

/* The parent's side: waits for the child, killing it on a limit; returns the command's exit code. */
static int supervise(const char *cmd, pid_t child, ks_watch *watch, const ks_cli_isolation *isolation,
                     const char *allocator, int original_argc, char **original_argv)
{
    static slot_seen seen[KS_WATCH_SLOTS];
    memset(seen, 0, sizeof seen);
    uint64_t start_ns = monotonic_ns(), poll_ns = ISOLATE_POLL_FIRST_NS;
    uint64_t callback_timeout_ns = (uint64_t)(isolation->callback_timeout_s * 1e9);
    uint64_t run_timeout_ns = (uint64_t)(isolation->run_timeout_s * 1e9);
    stop_reason reason = STOP_NONE;
    int stopped_slot = -1;
    bool live = isatty(STDERR_FILENO) && isatty(STDOUT_FILENO), progress_shown = false;
    uint64_t next_progress_ns = start_ns + ISOLATE_PROGRESS_EVERY_NS;
    uint64_t rss_seen = 0;
    int status = 0;
    for (;;) {
        pid_t done = waitpid(child, &status, WNOHANG);
        if (done == child)
            break;
        if (done < 0 && errno != EINTR) {
            fprintf(stderr, "ksalloc %s: waitpid: %s\n", cmd, strerror(errno));
            return KS_EXIT_ERROR;
        }
        if (reason == STOP_NONE) {
            uint64_t now_ns = monotonic_ns();
            for (unsigned index = 0; index < KS_WATCH_SLOTS && callback_timeout_ns != 0; index++) {
                uint32_t callback = atomic_load_explicit(&watch->slots[index].callback, memory_order_acquire);
                uint64_t sequence = atomic_load_explicit(&watch->slots[index].sequence, memory_order_relaxed);
                if (callback != seen[index].callback || sequence != seen[index].sequence) {
                    seen[index] = (slot_seen){callback, sequence, now_ns};
                } else if (callback != KS_WATCH_IDLE && now_ns - seen[index].since_ns > callback_timeout_ns) {
                    reason = STOP_HANG;
                    stopped_slot = (int)index;
                    break;
                }
            }
            if (reason == STOP_NONE && isolation->rss_limit_mb != 0) {
                rss_seen = resident_bytes(child);
                if (rss_seen > isolation->rss_limit_mb * 1048576u)
                    reason = STOP_RSS;
            }
            if (reason == STOP_NONE && run_timeout_ns != 0 && now_ns - start_ns > run_timeout_ns)
                reason = STOP_RUN_TIMEOUT;
            if (reason == STOP_NONE && now_ns >= next_progress_ns) {
                print_progress(cmd, watch, now_ns - start_ns, live);
                progress_shown = true;
                next_progress_ns = now_ns + ISOLATE_PROGRESS_EVERY_NS;
            }
            if (reason != STOP_NONE) {
                if (stopped_slot < 0)
                    stopped_slot = busy_slot(watch);
                kill(child, SIGKILL);
                continue; /* reap it */
            }
        }
        struct timespec pause = {0, (long)poll_ns};
        nanosleep(&pause, NULL);
        poll_ns = poll_ns * 2 > ISOLATE_POLL_MAX_NS ? ISOLATE_POLL_MAX_NS : poll_ns * 2;
    }
    if (live && progress_shown)
        fprintf(stderr, "\r%-100s\r", "");
    if (reason == STOP_NONE && atomic_load(&watch->finished) && WIFEXITED(status))
        return WEXITSTATUS(status);

    int slot = stopped_slot >= 0 ? stopped_slot : busy_slot(watch);
    char where[KS_WATCH_NAME_BYTES + 160] = "outside any allocator callback";
    if (slot >= 0)
        describe_slot(watch, slot, allocator, where, sizeof where);
    fflush(stdout);
    switch (reason) {
    case STOP_HANG:
        fprintf(stderr, "FAULT allocator-hung: no return %s within %g s (--timeout); killed\n", where,
                isolation->callback_timeout_s);
        break;
    case STOP_RSS:
        fprintf(stderr, "FAULT allocator-rss-limit: %" PRIu64 " MiB resident, over --rss-limit-mb %" PRIu64 ", %s; killed\n",
                rss_seen >> 20, isolation->rss_limit_mb, where);
        break;
    case STOP_RUN_TIMEOUT:
        fprintf(stderr, "%s: the run passed --run-timeout %g s %s; killed\n",
                slot >= 0 ? "FAULT allocator-run-timeout" : "ksalloc error", isolation->run_timeout_s, where);
        break;
    case STOP_NONE:
        if (WIFSIGNALED(status))
            fprintf(stderr, "%s: killed by signal %d (%s) %s\n", slot >= 0 ? "FAULT allocator-crashed" : "ksalloc error",
                    WTERMSIG(status), strsignal(WTERMSIG(status)), where);
        else if (atomic_load(&watch->sanitizer_died))
            fprintf(stderr, "%s: the sanitizer's report above ended the process (exit status %d) %s\n",
                    slot >= 0 ? "FAULT allocator-crashed" : "ksalloc error", WEXITSTATUS(status), where);
        else if (WIFEXITED(status) && atomic_load(&watch->finished))
            fprintf(stderr, "%s: ended the process with status %d after the command finished %s\n",
                    slot >= 0 ? "FAULT allocator-exited" : "ksalloc error", WEXITSTATUS(status), where);
        else
            fprintf(stderr, "%s: the process ended with exit status %d before the command finished (exit() or "
                            "_exit() called, or a sanitizer's report above) %s\n",
                    slot >= 0 ? "FAULT allocator-exited" : "ksalloc error", WIFEXITED(status) ? WEXITSTATUS(status) : -1,
                    where);
        break;
    }
    print_reproducer(original_argc, original_argv);
    return slot >= 0 ? KS_EXIT_FAULT : KS_EXIT_ERROR;
}

int ks_cli_isolated(const char *cmd, const ks_cli_isolation *isolation, int (*body)(int, char **), int argc,
                    char **argv, const char *allocator, int original_argc, char **original_argv)
{
    if (!isolation->enabled)
        return body(argc, argv);
    ks_watch *watch = mmap(NULL, sizeof *watch, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (watch == MAP_FAILED) {
        fprintf(stderr, "ksalloc %s: cannot map the watch shared with the child (%s); --no-isolate runs without\n",
                cmd, strerror(errno));
        return KS_EXIT_ERROR;
    }
    fflush(stdout);
    fflush(stderr);
    pid_t child = fork();
    if (child < 0) {
        fprintf(stderr, "ksalloc %s: fork: %s; --no-isolate runs without a child process\n", cmd, strerror(errno));
        munmap(watch, sizeof *watch);
        return KS_EXIT_ERROR;
    }
    if (child == 0) {
        current_watch = watch;
        if (__sanitizer_set_death_callback != NULL)
            __sanitizer_set_death_callback(note_sanitizer_death);
        setvbuf(stdout, NULL, _IOLBF, 0); /* what was printed survives a crash */
        int code = body(argc, argv);
        fflush(stdout);
        fflush(stderr);
        watch->exit_code = code;
        atomic_store(&watch->finished, 1u);
        exit(code);
    }
    int code = supervise(cmd, child, watch, isolation, allocator, original_argc, original_argv);
    munmap(watch, sizeof *watch);
    return code;
}
