// The server's durable state: jobs and their complete event logs in one SQLite database
// (<state-dir>/ampd.db). No gRPC here; the job manager is the only writer.
//
// Schema (PRAGMA user_version = 1):
//   jobs(id TEXT PRIMARY KEY, state INTEGER, client_request_id TEXT UNIQUE (NULL when
//        none), spec_json TEXT (for people with the sqlite3 shell), job BLOB (ampd.v1.Job),
//        created_at / updated_at INTEGER (Unix ms))
//   events(job_id, seq, event BLOB (ampd.v1.JobEvent), PRIMARY KEY (job_id, seq))
// Job ids sort by submission time, so "ORDER BY id" is submission order.
//
// Durability: WAL journal, synchronous=NORMAL by default, FULL for the writes that
// matter most. In WAL mode NORMAL never corrupts the database and loses nothing when the
// process dies (SIGKILL, OOM kill): a commit is in the WAL file before it returns; only an
// OS crash or power cut can roll back the last commits, because the WAL is fsynced at
// checkpoints rather than at every commit. That is the right price for progress events,
// which arrive every few milliseconds on the training thread (an fsync each would cost
// milliseconds per event on a disk). Writes marked `durable` (a new job, every state
// change) run with synchronous=FULL: their commit fsyncs the WAL, and since the WAL is
// sequential that also makes every earlier event durable. So an acknowledged SubmitJob
// survives a power cut, and what a power cut can lose is a tail of progress events, which
// a resumed job re-creates from its checkpoint anyway.
//
// One connection guarded by a mutex: the writer is one training thread plus short RPC
// transactions, and reads are small pages; more connections would buy nothing here.
#pragma once

#include <sqlite3.h>

#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "ampd/v1/job.pb.h"
#include "base/status.h"

namespace ampd::server {

class JobStore {
 public:
  // Opens (creating if needed) the database file and its schema. Unavailable when the
  // file cannot be opened; DataLoss when it is not an ampd database or is corrupt.
  static StatusOr<std::unique_ptr<JobStore>> open(const std::string& path);
  ~JobStore();
  JobStore(const JobStore&) = delete;
  JobStore& operator=(const JobStore&) = delete;

  // Inserts a new job and its first event in one transaction (durable). AlreadyExists
  // when the id or the client_request_id is taken.
  Status insert_job(const ampd::v1::Job& job, const ampd::v1::JobEvent& first_event);

  // Appends an event and stores the job as it is after that event, atomically.
  Status append_event(const ampd::v1::Job& job, const ampd::v1::JobEvent& event, bool durable);

  // Stores the job row alone (no event).
  Status update_job(const ampd::v1::Job& job, bool durable);

  // NotFound when there is no such job.
  StatusOr<ampd::v1::Job> get_job(const std::string& id);
  // nullopt when no job carries this client_request_id.
  StatusOr<std::optional<ampd::v1::Job>> find_by_client_request_id(const std::string& request_id);

  // Up to `limit` events with seq > after_seq, in seq order.
  StatusOr<std::vector<ampd::v1::JobEvent>> list_events(const std::string& job_id,
                                                        int64_t after_seq, int limit);
  // The highest stored seq of the job (0 when it has none).
  StatusOr<int64_t> last_seq(const std::string& job_id);

  // Jobs with id > after_id, in id order, restricted to `states` unless it is empty; at
  // most `limit` of them.
  StatusOr<std::vector<ampd::v1::Job>> list_jobs(const std::vector<ampd::v1::JobState>& states,
                                                 const std::string& after_id, int limit);

  // Number of jobs per state, for metrics; states without jobs are absent.
  StatusOr<std::vector<std::pair<ampd::v1::JobState, int64_t>>> count_by_state();

  // The largest job id ("" when there are no jobs): new ids must sort after it.
  StatusOr<std::string> max_job_id();

  // Test seam (process-wide; not for production): while on, every store's database may
  // not grow (PRAGMA max_page_count at its current size, applied before each write), so
  // writes that need a new page fail in SQLite itself with SQLITE_FULL, "database or
  // disk is full" (ResourceExhausted), as on a full disk. Off restores the limit.
  static void set_disk_full_for_testing(bool full);

 private:
  explicit JobStore(sqlite3* db) : db_(db) {}
  Status exec(const char* sql);
  Status set_synchronous(bool full);
  Status put_job(const ampd::v1::Job& job, bool insert);
  Status put_event(const ampd::v1::JobEvent& event);
  // Runs `body` inside BEGIN IMMEDIATE ... COMMIT (ROLLBACK on error); `durable` switches
  // the connection to synchronous=FULL for this commit only.
  template <typename Body>
  Status transaction(bool durable, Body&& body);
  Status Error(const std::string& what) const;

  Status apply_disk_full_fault();  // requires mu_
  std::mutex mu_;
  sqlite3* db_;
  int fault_generation_ = 0;  // the set_disk_full_for_testing call last applied
};

}  // namespace ampd::server
