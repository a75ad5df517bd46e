#include "parallel.h"

#include <algorithm>
#include <condition_variable>
#include <cstdlib>
#include <deque>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

namespace eplb {

int32_t DefaultHostThreads() {
  if (const char* env = std::getenv("EPLB_HOST_THREADS")) {
    const long v = std::strtol(env, nullptr, 10);
    if (v >= 1) return static_cast<int32_t>(std::min<long>(v, 64));
  }
  const unsigned hw = std::thread::hardware_concurrency();
  return static_cast<int32_t>(std::clamp<unsigned>(hw / 2, 1u, 8u));
}

namespace {

// One ParallelRanges call: `num_tasks` ranges handed out in order to the
// threads that join it (the caller first), each joiner with its own worker
// index below `max_workers`.
struct Job {
  const std::function<void(int32_t, int32_t, int32_t)>* fn = nullptr;
  int32_t n = 0, num_tasks = 0, max_workers = 0;
  int32_t next_task = 0;                   // guarded by the pool's mutex, like the fields below
  int32_t joined = 0;                      // workers handed out (the caller is worker 0)
  int32_t active = 0;                      // pool threads working on it now
  std::vector<std::exception_ptr> errors;  // per task
  std::condition_variable done;            // active reached 0 with no task left
};

// Worker threads kept for the process's lifetime (thread starts were a
// tenth of a 1 ms plan on 4 threads). Never joined: the pool is leaked on
// purpose, so that no static destructor waits for a thread at exit. Callers
// never wait for a pool thread to become free: a caller runs its own job's
// tasks too, and waits only for tasks a pool thread has already started, so
// concurrent and nested calls cannot deadlock.
class Pool {
 public:
  static Pool& Get() {
    static Pool* pool = new Pool;
    return *pool;
  }

  void Run(Job& job) {
    std::unique_lock<std::mutex> lock(mu_);
    job.joined = 1;
    queue_.push_back(&job);
    // Enough idle (or starting) threads for this job's helpers, so that
    // concurrent callers (one per rank in a process) do not share them.
    for (int32_t h = job.max_workers - 1 - idle_; h > 0 && threads_ < kMaxThreads; --h) {
      try {
        std::thread(&Pool::Loop, this).detach();
        ++threads_;
        ++idle_;  // counted idle from the start: it will look for work first
      } catch (...) {
        break;  // run with the threads there are (the caller alone at worst)
      }
    }
    wake_.notify_all();
    Work(job, 0, lock);
    job.done.wait(lock, [&] { return job.active == 0; });
  }

 private:
  static constexpr int32_t kMaxThreads = 63;

  // Runs job's tasks as worker w until none is left; called and returns with
  // the lock held.
  void Work(Job& job, int32_t w, std::unique_lock<std::mutex>& lock) {
    while (job.next_task < job.num_tasks) {
      const int32_t t = job.next_task++;
      if (job.next_task == job.num_tasks) Remove(job);
      lock.unlock();
      const int64_t n = job.n;
      const int32_t begin = static_cast<int32_t>(n * t / job.num_tasks);
      const int32_t end = static_cast<int32_t>(n * (t + 1) / job.num_tasks);
      std::exception_ptr error;
      try {
        (*job.fn)(begin, end, w);
      } catch (...) {
        error = std::current_exception();
      }
      lock.lock();
      if (error) job.errors[static_cast<size_t>(t)] = error;
    }
  }

  void Remove(Job& job) {
    auto it = std::find(queue_.begin(), queue_.end(), &job);
    if (it != queue_.end()) queue_.erase(it);
  }

  void Loop() {
    std::unique_lock<std::mutex> lock(mu_);
    for (;;) {
      Job* job = nullptr;
      wake_.wait(lock, [&] {
        for (Job* j : queue_)
          if (j->joined < j->max_workers && j->next_task < j->num_tasks) {
            job = j;
            return true;
          }
        return false;
      });
      --idle_;
      const int32_t w = job->joined++;
      ++job->active;
      Work(*job, w, lock);
      if (--job->active == 0) job->done.notify_all();
      ++idle_;
    }
  }

  std::mutex mu_;
  std::condition_variable wake_;
  std::deque<Job*> queue_;
  int32_t threads_ = 0;
  int32_t idle_ = 0;  // threads not working on a job
};

}  // namespace

void ParallelRanges(int32_t n, int32_t max_threads, int32_t min_per_thread,
                    const std::function<void(int32_t, int32_t, int32_t)>& fn) {
  if (n <= 0) return;
  const int32_t per = std::max<int32_t>(1, min_per_thread);
  const int32_t workers = std::clamp<int32_t>(std::min(max_threads, (n + per - 1) / per), 1, n);
  if (workers == 1) {
    fn(0, n, 0);
    return;
  }
  // Up to twice as many ranges as workers (each of at least `per` indices),
  // handed out in order: a worker that drew cheap indices takes another
  // range instead of idling.
  Job job;
  job.fn = &fn;
  job.n = n;
  job.num_tasks = std::clamp<int32_t>(n / per, workers, 2 * workers);
  job.max_workers = workers;
  job.errors.resize(static_cast<size_t>(job.num_tasks));
  Pool::Get().Run(job);
  for (const auto& e : job.errors)
    if (e) std::rethrow_exception(e);
}

}  // namespace eplb
