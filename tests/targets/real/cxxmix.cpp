// A C++ program for the interceptor: exceptions thrown through several hooked frames (with
// destructors and a rethrow on the way), virtual calls, templates, lambdas, std::sort with a
// custom comparator and a pool of 4 std::threads.
//
// Protocol: prints "ready", then for every line on stdin runs one round of deterministic
// work, prints its transcript and "round N end"; at end of input prints "bye rounds=N",
// exits 0.
#include <algorithm>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <numeric>
#include <queue>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#if defined(__clang__)
#define NOIPA __attribute__((noinline, used))
#else
#define NOIPA __attribute__((noipa, used))
#endif

static uint64_t H;
NOIPA void feed(uint64_t v) { H = (H ^ v) * 1099511628211ull; }

// ---- exceptions through hooked frames ----
struct Boom : std::runtime_error {
    int value;
    explicit Boom(int v) : std::runtime_error("boom " + std::to_string(v)), value(v) {}
};
static thread_local int destroyed;
struct Guard {
    int k;
    explicit Guard(int k) : k(k) {}
    NOIPA ~Guard() { destroyed += k; }
};
NOIPA int thrower(int depth, int v) {
    Guard g(depth + 1);
    if (depth == 0) {
        if (v % 5 == 0) throw std::out_of_range("range " + std::to_string(v));
        throw Boom(v);
    }
    return thrower(depth - 1, v + depth) ^ depth;
}
NOIPA int rethrower(int v) {
    Guard g(100);
    try {
        return thrower(5, v);
    } catch (const Boom &b) {
        destroyed += 1000;
        throw;  // rethrown through this frame and the next
    }
}
NOIPA int catcher(int v) {
    try {
        return rethrower(v);
    } catch (const Boom &b) {
        return b.value * 2 + (int)std::strlen(b.what());
    } catch (const std::exception &e) {
        return -(int)std::strlen(e.what());
    }
}

// ---- virtual calls ----
struct Shape {
    virtual ~Shape() = default;
    virtual double area() const = 0;
    virtual int sides() const = 0;
};
struct Circle : Shape {
    double r;
    explicit Circle(double r) : r(r) {}
    NOIPA double area() const override { return 3.0 * r * r; }
    NOIPA int sides() const override { return 0; }
};
struct Rect : Shape {
    double w, h;
    Rect(double w, double h) : w(w), h(h) {}
    NOIPA double area() const override { return w * h; }
    NOIPA int sides() const override { return 4; }
};
struct Tri : Rect {
    using Rect::Rect;
    NOIPA double area() const override { return Rect::area() / 2; }
    NOIPA int sides() const override { return 3; }
};
NOIPA std::unique_ptr<Shape> make_shape(int k) {
    switch (k % 3) {
    case 0: return std::make_unique<Circle>(k * 0.5);
    case 1: return std::make_unique<Rect>(k, k + 1.5);
    default: return std::make_unique<Tri>(k + 0.25, 2.0);
    }
}

// ---- templates ----
template <typename T> NOIPA T tsum(const std::vector<T> &v, T init) {
    for (const T &x : v) init = init * 3 + x;
    return init;
}
template <typename T, int N> struct Ring {
    T buf[N] = {};
    int pos = 0;
    NOIPA void push(T x) { buf[pos++ % N] = x; }
    NOIPA T fold() const { return std::accumulate(buf, buf + N, T{}); }
};

// ---- sort with a custom comparator ----
struct Item {
    uint32_t key;
    int idx;
};
NOIPA bool item_less(const Item &a, const Item &b) {
    if ((a.key & 0xff) != (b.key & 0xff)) return (a.key & 0xff) < (b.key & 0xff);
    return a.idx > b.idx;
}

// ---- a pool of 4 threads ----
class Pool {
  public:
    explicit Pool(int n) {
        for (int i = 0; i < n; i++) workers.emplace_back([this] { run(); });
    }
    ~Pool() {
        {
            std::lock_guard<std::mutex> l(m);
            done = true;
        }
        cv.notify_all();
        for (auto &t : workers) t.join();
    }
    void submit(std::function<void()> f) {
        {
            std::lock_guard<std::mutex> l(m);
            tasks.push(std::move(f));
        }
        cv.notify_one();
    }

  private:
    NOIPA void run() {
        for (;;) {
            std::function<void()> f;
            {
                std::unique_lock<std::mutex> l(m);
                cv.wait(l, [this] { return done || !tasks.empty(); });
                if (tasks.empty()) return;
                f = std::move(tasks.front());
                tasks.pop();
            }
            f();
        }
    }
    std::vector<std::thread> workers;
    std::queue<std::function<void()>> tasks;
    std::mutex m;
    std::condition_variable cv;
    bool done = false;
};

NOIPA uint64_t task_work(int i) {
    destroyed = 0;  // per thread: reset, so the result does not depend on scheduling
    uint64_t s = (uint64_t)i;
    for (int k = 0; k < 30; k++) s = s * 6364136223846793005ull + (uint64_t)catcher(i * 7 + k);
    auto sh = make_shape(i);
    return s ^ (uint64_t)(sh->area() * 16) ^ (uint64_t)destroyed;
}

extern "C" NOIPA int cpp_called(int x) {
    int h = x;
    for (int i = 0; i < 10; i++) h = h * 33 + i;
    return h;
}
extern "C" NOIPA int cpp_never_called(const char *s) {
    int h = 7;
    while (*s) h = h * 31 + *s++;
    return h ^ 0x1234;
}

NOIPA void round_work(int r) {
    H = 1469598103934665603ull;
    destroyed = 0;
    int ex = 0;
    for (int i = 0; i < 60; i++) ex += catcher(i + r);
    feed((uint64_t)ex);
    feed((uint64_t)destroyed);
    std::printf("  exceptions: %d destroyed %d\n", ex, destroyed);

    std::vector<std::unique_ptr<Shape>> shapes;
    for (int i = 0; i < 50; i++) shapes.push_back(make_shape(i + r));
    double area = 0;
    int sides = 0;
    for (const auto &s : shapes) {
        area += s->area();
        sides += s->sides();
    }
    feed((uint64_t)(area * 64));
    std::printf("  virtual: area %.6f sides %d\n", area, sides);

    std::vector<int> vi(100);
    std::iota(vi.begin(), vi.end(), r);
    std::vector<double> vd(vi.begin(), vi.end());
    Ring<long, 7> ring;
    for (int x : vi) ring.push(x * 3L);
    int ti = tsum<int>(vi, 1);
    double td = tsum<double>(vd, 0.5);
    feed((uint64_t)ti);
    feed((uint64_t)ring.fold());
    std::printf("  templates: %d %a %ld\n", ti, td, ring.fold());

    int base = r * 10;
    auto add = [base](int x) { return x + base; };
    std::function<int(int)> twice = [&add](int x) { return add(add(x)); };
    std::vector<int> mapped;
    std::transform(vi.begin(), vi.end(), std::back_inserter(mapped),
                   [&](int x) { return twice(x) * (x % 3 == 0 ? -1 : 1); });
    long lsum = std::accumulate(mapped.begin(), mapped.end(), 0L);
    auto cnt = std::count_if(mapped.begin(), mapped.end(), [](int x) { return x < 0; });
    feed((uint64_t)lsum);
    std::printf("  lambdas: %ld negatives %ld\n", lsum, (long)cnt);

    std::vector<Item> items;
    uint32_t seed = 12345u + (uint32_t)r;
    for (int i = 0; i < 3000; i++) {
        seed = seed * 1103515245u + 12345u;
        items.push_back({seed >> 8, i});
    }
    std::sort(items.begin(), items.end(), [](const Item &a, const Item &b) { return item_less(a, b); });
    uint64_t order = 0;
    for (const auto &it : items) order = order * 31 + (uint64_t)it.idx;
    feed(order);
    std::printf("  sort: first %d last %d order %016llx\n", items.front().idx, items.back().idx,
                (unsigned long long)order);

    std::vector<uint64_t> results(64);
    {
        Pool pool(4);
        for (int i = 0; i < 64; i++) pool.submit([&results, i, r] { results[i] = task_work(i + r); });
    }
    uint64_t ps = 0;
    for (uint64_t x : results) ps = ps * 1000003 + x;
    feed(ps);
    std::printf("  pool: %016llx\n", (unsigned long long)ps);
    feed((uint64_t)cpp_called(r));
    std::printf("  checksum: %016llx\n", (unsigned long long)H);
}

int main(int argc, char **argv) {
    if (argc > 100) return cpp_never_called(argv[0]);
    std::printf("ready\n");
    std::fflush(stdout);
    char line[256];
    int rounds = 0;
    while (std::fgets(line, sizeof line, stdin)) {
        rounds++;
        std::printf("round %d\n", rounds);
        round_work(rounds);
        std::printf("round %d end\n", rounds);
        std::fflush(stdout);
    }
    std::printf("bye rounds=%d\n", rounds);
    return 0;
}
