// gbench_c.cc -- the C API of gbench_c.h over Google Benchmark: the only C++ in ksalloc.
//
// Each C entry point is a thin cast-and-forward onto benchmark::State or
// benchmark::internal::Benchmark; nothing here measures anything. Two additions only:
//  - the console reporter prints "[done/total]" before each result, with total computed from
//    the --benchmark_filter in force using Google Benchmark's own instance naming and matching
//    rules (POSIX extended regex, a leading '-' negates, "all" means everything); it shows only
//    the median of repeated runs and only the counters the driver names, so that a benchmark is
//    one readable line while the JSON report keeps every run and every counter;
//  - the registered names are remembered for that count.
// Google Benchmark reports its own errors (and exits on a bad flag), as it does for C++ users.

#include "gbench_c.h"
#include "progress.h"

#include <regex.h>
#include <unistd.h>

#include <benchmark/benchmark.h>

#include <cstdio>
#include <cstring>
#include <iterator>
#include <set>
#include <sstream>
#include <string>
#include <vector>

namespace {

// What the progress count needs to know of a registration to rebuild its instance names.
struct Registration {
    std::string name;
    std::vector<int64_t> args;
    std::vector<int> thread_counts;
    bool real_time = false;
    int repetitions = 0;
};

std::vector<Registration> &registrations()
{
    static std::vector<Registration> all;
    return all;
}

// A ks_gbench: the Benchmark it configures and its entry in registrations().
struct Handle {
    benchmark::internal::Benchmark *bench;
    size_t registration;
};

std::vector<Handle *> &handles()
{
    static std::vector<Handle *> all;
    return all;
}

benchmark::State &cxx(ks_gbench_state *state)
{
    return *reinterpret_cast<benchmark::State *>(state);
}

const benchmark::State &cxx(const ks_gbench_state *state)
{
    return *reinterpret_cast<const benchmark::State *>(state);
}

Handle &cxx(ks_gbench *bench)
{
    return *reinterpret_cast<Handle *>(bench);
}

// Google Benchmark's instance name: function/args/[repeats:N]/[real_time]/[threads:N].
std::vector<std::string> instance_names(const Registration &reg)
{
    std::vector<std::string> names;
    std::vector<std::vector<int64_t>> arg_sets;
    if (reg.args.empty())
        arg_sets.push_back({});
    for (int64_t arg : reg.args)
        arg_sets.push_back({arg});
    std::vector<int> threads = reg.thread_counts;
    bool threads_named = !threads.empty();
    if (threads.empty())
        threads.push_back(1);
    for (const auto &args : arg_sets) {
        for (int thread_count : threads) {
            std::string name = reg.name;
            for (int64_t arg : args)
                name += "/" + std::to_string(arg);
            if (reg.repetitions != 0)
                name += "/repeats:" + std::to_string(reg.repetitions);
            if (reg.real_time)
                name += "/real_time";
            if (threads_named)
                name += "/threads:" + std::to_string(thread_count);
            names.push_back(name);
        }
    }
    return names;
}

// The filter as Google Benchmark applies it: a POSIX extended regex searched in the instance
// name, "" and "all" meaning everything, a leading '-' selecting what does not match.
class Filter {
public:
    explicit Filter(std::string pattern)
    {
        if (pattern.empty() || pattern == "all")
            pattern = ".";
        if (pattern[0] == '-') {
            negative_ = true;
            pattern = pattern.substr(1);
        }
        valid_ = regcomp(&regex_, pattern.c_str(), REG_EXTENDED | REG_NOSUB) == 0;
    }
    ~Filter()
    {
        if (valid_)
            regfree(&regex_);
    }
    Filter(const Filter &) = delete;
    Filter &operator=(const Filter &) = delete;

    // An invalid pattern selects everything here; Google Benchmark reports it and runs nothing.
    bool selects(const std::string &name) const
    {
        return !valid_ || (regexec(&regex_, name.c_str(), 0, nullptr, 0) == 0) != negative_;
    }

private:
    regex_t regex_;
    bool valid_ = false;
    bool negative_ = false;
};

// How many benchmark instances the filter selects (each is reported once, repetitions and
// aggregates together).
size_t selected_instances(const std::string &filter_flag)
{
    Filter filter(filter_flag);
    size_t instances = 0;
    for (const Registration &reg : registrations())
        for (const std::string &name : instance_names(reg))
            instances += filter.selects(name) ? 1 : 0;
    return instances;
}

// The console reporter with a progress prefix and a chosen subset of counters.
class ProgressReporter : public benchmark::ConsoleReporter {
public:
    ProgressReporter(OutputOptions options, size_t total_instances, std::set<std::string> shown)
        : ConsoleReporter(options), total_instances_(total_instances), shown_(std::move(shown))
    {
        // "[done/total] " with done padded to the width of total, so that columns line up.
        prefix_width_ = 2 * std::to_string(total_instances_).size() + 4;
    }

    // Google Benchmark reports an instance in two calls: its runs (one per repetition), then, when
    // repeated, its aggregates. A repeated instance shows its median only: one line per
    // benchmark, the figure the summary ranks by (the JSON report has every run and aggregate).
    void ReportRuns(const std::vector<Run> &reports) override
    {
        std::vector<Run> shown;
        for (const Run &run : reports) {
            if (run.error_occurred) {
                shown.push_back(run); // the first error says why; repetitions repeat it
                break;
            }
            bool aggregate = run.run_type == Run::RT_Aggregate;
            if ((aggregate && run.aggregate_name == "median") || (!aggregate && reports.size() == 1))
                shown.push_back(run);
        }
        if (shown.empty())
            return;
        if (!shown_.empty())
            for (Run &run : shown)
                for (auto it = run.counters.begin(); it != run.counters.end();)
                    it = shown_.count(it->first) == 0 ? run.counters.erase(it) : std::next(it);
        done_instances_++;
        ks_bench_progress_end(); /* an in-place progress line gives way to the results */
        ConsoleReporter::ReportRuns(shown);
        GetOutputStream().flush();
    }

protected:
    // The header is several lines (rules and titles); each is indented by the prefix width.
    void PrintHeader(const Run &report) override
    {
        std::ostream &out = GetOutputStream();
        std::ostringstream header;
        SetOutputStream(&header);
        ConsoleReporter::PrintHeader(report);
        SetOutputStream(&out);
        std::istringstream lines(header.str());
        std::string line;
        while (std::getline(lines, line))
            out << std::string(prefix_width_, ' ') << line << "\n";
    }

    // Every result line carries the progress of the instance it belongs to.
    void PrintRunData(const Run &report) override
    {
        char prefix[64];
        std::snprintf(prefix, sizeof prefix, "[%*zu/%zu] ", static_cast<int>(std::to_string(total_instances_).size()),
                      done_instances_, total_instances_);
        GetOutputStream() << prefix;
        ConsoleReporter::PrintRunData(report);
        if (report.error_occurred)
            GetOutputStream() << "\n"; // Google Benchmark 1.7 ends an error line without one
    }

private:
    size_t total_instances_;
    size_t done_instances_ = 0;
    size_t prefix_width_;
    std::set<std::string> shown_;
};

// Google Benchmark keeps its flags private; the two the progress count needs are read from
// argv before Initialize consumes them.
std::string g_filter_flag = ".";
bool g_console_format = true;

void scan_flags(int argc, char **argv)
{
    for (int index = 1; index < argc; index++) {
        const char *arg = argv[index];
        if (std::strncmp(arg, "--benchmark_filter=", 19) == 0)
            g_filter_flag = arg + 19;
        else if (std::strncmp(arg, "--benchmark_format=", 19) == 0)
            g_console_format = std::strcmp(arg + 19, "console") == 0;
    }
}

std::set<std::string> split_names(const char *list)
{
    std::set<std::string> names;
    if (list == nullptr)
        return names;
    std::stringstream stream(list);
    std::string name;
    while (std::getline(stream, name, ','))
        if (!name.empty())
            names.insert(name);
    return names;
}

} // namespace

extern "C" {

ks_gbench *ks_gbench_register(const char *name, ks_gbench_fn fn, void *arg)
{
    benchmark::internal::Benchmark *bench =
        benchmark::RegisterBenchmark(name, [fn, arg](benchmark::State &state) {
            fn(reinterpret_cast<ks_gbench_state *>(&state), arg);
        });
    if (bench == nullptr)
        return nullptr;
    Registration reg;
    reg.name = name;
    registrations().push_back(reg);
    Handle *handle = new Handle{bench, registrations().size() - 1};
    handles().push_back(handle);
    return reinterpret_cast<ks_gbench *>(handle);
}

void ks_gbench_arg(ks_gbench *bench, int64_t value)
{
    cxx(bench).bench->Arg(value);
    registrations()[cxx(bench).registration].args.push_back(value);
}

void ks_gbench_threads(ks_gbench *bench, int thread_count)
{
    cxx(bench).bench->Threads(thread_count);
    registrations()[cxx(bench).registration].thread_counts.push_back(thread_count);
}

void ks_gbench_use_real_time(ks_gbench *bench)
{
    cxx(bench).bench->UseRealTime();
    registrations()[cxx(bench).registration].real_time = true;
}

void ks_gbench_min_time(ks_gbench *bench, double seconds)
{
    cxx(bench).bench->MinTime(seconds);
}

void ks_gbench_repetitions(ks_gbench *bench, int repetitions)
{
    cxx(bench).bench->Repetitions(repetitions);
    registrations()[cxx(bench).registration].repetitions = repetitions;
}

void ks_gbench_unit(ks_gbench *bench, ks_gbench_time_unit unit)
{
    static const benchmark::TimeUnit units[] = {benchmark::kNanosecond, benchmark::kMicrosecond,
                                                benchmark::kMillisecond};
    cxx(bench).bench->Unit(units[unit]);
}

bool ks_gbench_keep_running_batch(ks_gbench_state *state, uint64_t units)
{
    return cxx(state).KeepRunningBatch(static_cast<benchmark::IterationCount>(units));
}

void ks_gbench_pause(ks_gbench_state *state)
{
    cxx(state).PauseTiming();
}

void ks_gbench_resume(ks_gbench_state *state)
{
    cxx(state).ResumeTiming();
}

int64_t ks_gbench_range(const ks_gbench_state *state, size_t index)
{
    return cxx(state).range(index);
}

int ks_gbench_thread_index(const ks_gbench_state *state)
{
    return cxx(state).thread_index();
}

int ks_gbench_thread_count(const ks_gbench_state *state)
{
    return cxx(state).threads();
}

uint64_t ks_gbench_iterations(const ks_gbench_state *state)
{
    return static_cast<uint64_t>(cxx(state).iterations());
}

uint64_t ks_gbench_max_iterations(const ks_gbench_state *state)
{
    return static_cast<uint64_t>(cxx(state).max_iterations);
}

void ks_gbench_set_items_processed(ks_gbench_state *state, int64_t items)
{
    cxx(state).SetItemsProcessed(items);
}

void ks_gbench_set_bytes_processed(ks_gbench_state *state, int64_t bytes)
{
    cxx(state).SetBytesProcessed(bytes);
}

void ks_gbench_set_label(ks_gbench_state *state, const char *label)
{
    cxx(state).SetLabel(label);
}

void ks_gbench_skip_with_error(ks_gbench_state *state, const char *msg)
{
    cxx(state).SkipWithError(msg);
}

bool ks_gbench_error_occurred(const ks_gbench_state *state)
{
    return cxx(state).error_occurred();
}

void ks_gbench_counter(ks_gbench_state *state, const char *name, double value, unsigned flags)
{
    cxx(state).counters[name] = benchmark::Counter(value, static_cast<benchmark::Counter::Flags>(flags));
}

void ks_gbench_initialize(int *argc, char **argv)
{
    scan_flags(*argc, argv);
    benchmark::Initialize(argc, argv);
}

bool ks_gbench_report_unrecognized(int argc, char **argv)
{
    return benchmark::ReportUnrecognizedArguments(argc, argv);
}

void ks_gbench_add_context(const char *key, const char *value)
{
    benchmark::AddCustomContext(key, value);
}

const char *ks_gbench_filter(void)
{
    return g_filter_flag.c_str();
}

bool ks_gbench_selected(const char *instance_name)
{
    static Filter filter(g_filter_flag); // the flag is read once, by ks_gbench_initialize
    return filter.selects(instance_name);
}

size_t ks_gbench_run(const char *console_counters)
{
    if (!g_console_format)
        return benchmark::RunSpecifiedBenchmarks();
    bool color = isatty(STDOUT_FILENO) != 0;
    ProgressReporter reporter(color ? benchmark::ConsoleReporter::OO_Color : benchmark::ConsoleReporter::OO_None,
                              selected_instances(g_filter_flag), split_names(console_counters));
    return benchmark::RunSpecifiedBenchmarks(&reporter);
}

void ks_gbench_shutdown(void)
{
    benchmark::Shutdown();
    for (Handle *handle : handles())
        delete handle;
    handles().clear();
}

int ks_gbench_main(int argc, char **argv)
{
    ks_gbench_initialize(&argc, argv);
    if (ks_gbench_report_unrecognized(argc, argv))
        return 1;
    ks_gbench_run(nullptr);
    ks_gbench_shutdown();
    return 0;
}

} // extern "C"

static_assert(static_cast<int>(KS_GBENCH_COUNTER_RATE) == static_cast<int>(benchmark::Counter::kIsRate), "counter flags mirror benchmark::Counter");
static_assert(static_cast<int>(KS_GBENCH_COUNTER_AVG_THREADS) == static_cast<int>(benchmark::Counter::kAvgThreads), "counter flags mirror benchmark::Counter");
static_assert(static_cast<int>(KS_GBENCH_COUNTER_ITER_INVARIANT) == static_cast<int>(benchmark::Counter::kIsIterationInvariant),
              "counter flags mirror benchmark::Counter");
static_assert(static_cast<int>(KS_GBENCH_COUNTER_AVG_ITERATIONS) == static_cast<int>(benchmark::Counter::kAvgIterations),
              "counter flags mirror benchmark::Counter");
