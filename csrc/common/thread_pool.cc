#include "common/thread_pool.h"

#include <pthread.h>

namespace biodali {

ThreadPool::ThreadPool(int num_threads, std::string name) {
  // The caller participates in ParallelFor, so n threads of parallelism need n - 1 workers.
  for (int i = 1; i < num_threads; ++i) {
    workers_.emplace_back([this] { WorkerLoop(); });
    pthread_setname_np(workers_.back().native_handle(), name.substr(0, 15).c_str());
  }
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stopping_ = true;
  }
  work_ready_.notify_all();
  for (auto &t : workers_) t.join();
}

void ThreadPool::RunTasks() {
  // Called with mutex_ unlocked; claims tasks one at a time.
  for (;;) {
    int64_t i;
    const std::function<void(int64_t)> *task;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (task_ == nullptr || next_task_ >= num_tasks_) return;
      i = next_task_++;
      task = task_;
    }
    std::exception_ptr error;
    try {
      if (!error_) (*task)(i);  // after a failure, drain remaining tasks without running them
    } catch (...) {
      error = std::current_exception();
    }
    std::lock_guard<std::mutex> lock(mutex_);
    if (error && !error_) error_ = error;
    if (++tasks_done_ == num_tasks_) work_done_.notify_all();
  }
}

void ThreadPool::WorkerLoop() {
  uint64_t seen_generation = 0;
  for (;;) {
    {
      std::unique_lock<std::mutex> lock(mutex_);
      work_ready_.wait(lock, [&] { return stopping_ || generation_ != seen_generation; });
      if (stopping_) return;
      seen_generation = generation_;
    }
    RunTasks();
  }
}

void ThreadPool::ParallelFor(int64_t num_tasks, const std::function<void(int64_t)> &task) {
  if (num_tasks <= 0) return;
  std::lock_guard<std::mutex> submit_lock(submit_mutex_);
  if (workers_.empty() || num_tasks == 1) {
    for (int64_t i = 0; i < num_tasks; ++i) task(i);
    return;
  }
  {
    std::lock_guard<std::mutex> lock(mutex_);
    task_ = &task;
    num_tasks_ = num_tasks;
    next_task_ = 0;
    tasks_done_ = 0;
    error_ = nullptr;
    ++generation_;
  }
  work_ready_.notify_all();
  RunTasks();
  std::exception_ptr error;
  {
    std::unique_lock<std::mutex> lock(mutex_);
    work_done_.wait(lock, [&] { return tasks_done_ == num_tasks_; });
    task_ = nullptr;
    error = error_;
    error_ = nullptr;
  }
  if (error) std::rethrow_exception(error);
}

}  // namespace biodali
