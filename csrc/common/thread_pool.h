// A fixed pool of worker threads owned by one reader. Work is submitted as a batch of
// independent tasks; the caller blocks until all are done and gets the first exception
// any task threw (rethrown on the caller's thread, so errors surface in Python).
#pragma once

#include <condition_variable>
#include <cstdint>
#include <exception>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace biodali {

class ThreadPool {
 public:
  explicit ThreadPool(int num_threads, std::string name = "biodali-io");
  ~ThreadPool();
  ThreadPool(const ThreadPool &) = delete;
  ThreadPool &operator=(const ThreadPool &) = delete;

  int num_threads() const { return static_cast<int>(workers_.size()); }

  // Runs task(i) for i in [0, num_tasks) on the pool (the calling thread helps), returns when
  // all finished; rethrows the first exception. Not reentrant from inside a task.
  void ParallelFor(int64_t num_tasks, const std::function<void(int64_t)> &task);

 private:
  void WorkerLoop();
  void RunTasks();

  std::vector<std::thread> workers_;
  std::mutex mutex_;
  std::condition_variable work_ready_, work_done_;
  const std::function<void(int64_t)> *task_ = nullptr;
  int64_t num_tasks_ = 0;
  int64_t next_task_ = 0;
  int64_t tasks_done_ = 0;
  uint64_t generation_ = 0;
  bool stopping_ = false;
  std::exception_ptr error_;
  std::mutex submit_mutex_;  // one ParallelFor at a time
};

}  // namespace biodali
