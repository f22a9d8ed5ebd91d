#include "server/job_store.h"

#include <google/protobuf/util/time_util.h>

#include <atomic>
#include <chrono>

#include "engine/job_spec.h"

namespace ampd::server {

namespace {

using ampd::v1::Job;
using ampd::v1::JobEvent;

constexpr int kSchemaVersion = 1;

constexpr const char* kSchema = R"sql(
CREATE TABLE IF NOT EXISTS jobs (
  id TEXT PRIMARY KEY,
  state INTEGER NOT NULL,
  client_request_id TEXT UNIQUE,
  spec_json TEXT NOT NULL,
  job BLOB NOT NULL,
  created_at INTEGER NOT NULL,
  updated_at INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs(state, id);
CREATE TABLE IF NOT EXISTS events (
  job_id TEXT NOT NULL REFERENCES jobs(id),
  seq INTEGER NOT NULL,
  event BLOB NOT NULL,
  PRIMARY KEY (job_id, seq)
) WITHOUT ROWID;
)sql";

int64_t now_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

// A prepared statement that finalizes itself.
class Stmt {
 public:
  Stmt(sqlite3* db, const char* sql) { rc_ = sqlite3_prepare_v2(db, sql, -1, &stmt_, nullptr); }
  ~Stmt() { sqlite3_finalize(stmt_); }
  Stmt(const Stmt&) = delete;
  Stmt& operator=(const Stmt&) = delete;

  bool ok() const { return rc_ == SQLITE_OK; }
  sqlite3_stmt* get() { return stmt_; }
  void bind_text(int i, const std::string& s) {
    sqlite3_bind_text(stmt_, i, s.data(), static_cast<int>(s.size()), SQLITE_TRANSIENT);
  }
  void bind_blob(int i, const std::string& s) {
    sqlite3_bind_blob(stmt_, i, s.data(), static_cast<int>(s.size()), SQLITE_TRANSIENT);
  }
  void bind_int(int i, int64_t v) { sqlite3_bind_int64(stmt_, i, v); }
  void bind_null(int i) { sqlite3_bind_null(stmt_, i); }
  int step() { return sqlite3_step(stmt_); }
  std::string column_blob(int i) {
    const void* p = sqlite3_column_blob(stmt_, i);
    const int n = sqlite3_column_bytes(stmt_, i);
    return p == nullptr ? std::string()
                        : std::string(static_cast<const char*>(p), static_cast<size_t>(n));
  }
  std::string column_text(int i) {
    const unsigned char* p = sqlite3_column_text(stmt_, i);
    const int n = sqlite3_column_bytes(stmt_, i);
    return p == nullptr ? std::string()
                        : std::string(reinterpret_cast<const char*>(p), static_cast<size_t>(n));
  }
  int64_t column_int(int i) { return sqlite3_column_int64(stmt_, i); }

 private:
  sqlite3_stmt* stmt_ = nullptr;
  int rc_ = SQLITE_ERROR;
};

StatusOr<Job> parse_job(const std::string& bytes) {
  Job job;
  if (!job.ParseFromString(bytes)) return data_loss("job store: unreadable job record");
  return job;
}

int64_t timestamp_ms(const google::protobuf::Timestamp& t) {
  return t.seconds() * 1000 + t.nanos() / 1000000;
}

}  // namespace

StatusOr<std::unique_ptr<JobStore>> JobStore::open(const std::string& path) {
  sqlite3* db = nullptr;
  const int rc = sqlite3_open_v2(
      path.c_str(), &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX, nullptr);
  if (rc != SQLITE_OK) {
    std::string msg = db != nullptr ? sqlite3_errmsg(db) : sqlite3_errstr(rc);
    sqlite3_close(db);
    return unavailable("job store: cannot open " + path + ": " + msg);
  }
  std::unique_ptr<JobStore> store(new JobStore(db));
  // busy_timeout: only this process writes, but an operator's sqlite3 shell may hold a read
  // lock for a moment.
  AMPD_RETURN_IF_ERROR(store->exec("PRAGMA busy_timeout=5000"));
  {
    Stmt s(db, "PRAGMA journal_mode=WAL");
    if (!s.ok() || s.step() != SQLITE_ROW || s.column_text(0) != "wal") {
      return data_loss("job store: " + path + " cannot use WAL mode (" + sqlite3_errmsg(db) + ")");
    }
  }
  AMPD_RETURN_IF_ERROR(store->set_synchronous(false));
  AMPD_RETURN_IF_ERROR(store->exec("PRAGMA foreign_keys=ON"));
  int64_t version = 0;
  {
    Stmt s(db, "PRAGMA user_version");
    if (!s.ok() || s.step() != SQLITE_ROW) {
      return data_loss("job store: " + path + " is not a database: " + sqlite3_errmsg(db));
    }
    version = s.column_int(0);
  }
  if (version > kSchemaVersion) {
    return data_loss("job store: " + path + " has schema version " + std::to_string(version) +
                     ", newer than this ampd (" + std::to_string(kSchemaVersion) + ")");
  }
  AMPD_RETURN_IF_ERROR(store->exec(kSchema));
  AMPD_RETURN_IF_ERROR(
      store->exec(("PRAGMA user_version=" + std::to_string(kSchemaVersion)).c_str()));
  return store;
}

JobStore::~JobStore() {
  sqlite3_close(db_);
}

Status JobStore::Error(const std::string& what) const {
  const int code = sqlite3_errcode(db_);
  std::string msg = "job store: " + what + ": " + sqlite3_errmsg(db_);
  if (code == SQLITE_FULL) return resource_exhausted(msg);
  if (code == SQLITE_CORRUPT || code == SQLITE_NOTADB) return data_loss(msg);
  if ((sqlite3_extended_errcode(db_) & 0xff) == SQLITE_CONSTRAINT) {
    return Status(StatusCode::kAlreadyExists, msg);
  }
  return internal(msg);
}

Status JobStore::exec(const char* sql) {
  char* err = nullptr;
  if (sqlite3_exec(db_, sql, nullptr, nullptr, &err) != SQLITE_OK) {
    std::string msg = err != nullptr ? err : "unknown error";
    sqlite3_free(err);
    return Error(std::string("exec: ") + msg);
  }
  return Status::ok_status();
}

Status JobStore::set_synchronous(bool full) {
  return exec(full ? "PRAGMA synchronous=FULL" : "PRAGMA synchronous=NORMAL");
}

namespace {
std::atomic<bool> g_disk_full{false};
std::atomic<int> g_disk_full_generation{0};
}  // namespace

void JobStore::set_disk_full_for_testing(bool full) {
  g_disk_full = full;
  ++g_disk_full_generation;
}

Status JobStore::apply_disk_full_fault() {
  const int generation = g_disk_full_generation.load();
  if (generation == fault_generation_) return Status::ok_status();
  fault_generation_ = generation;
  // SQLite raises a limit below the current size to the current size.
  return exec(g_disk_full.load() ? "PRAGMA max_page_count=1" : "PRAGMA max_page_count=4294967294");
}

template <typename Body>
Status JobStore::transaction(bool durable, Body&& body) {
  AMPD_RETURN_IF_ERROR(apply_disk_full_fault());
  // synchronous cannot change inside a transaction, so it is switched around it.
  if (durable) AMPD_RETURN_IF_ERROR(set_synchronous(true));
  Status status = exec("BEGIN IMMEDIATE");
  if (status.ok()) {
    status = body();
    if (status.ok()) {
      status = exec("COMMIT");
      if (!status.ok()) (void)exec("ROLLBACK");
    } else {
      (void)exec("ROLLBACK");
    }
  }
  if (durable) {
    Status s = set_synchronous(false);
    if (status.ok()) status = s;
  }
  return status;
}

Status JobStore::put_job(const Job& job, bool insert) {
  const char* sql = insert ? "INSERT INTO jobs (id, state, client_request_id, spec_json, job, "
                             "created_at, updated_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)"
                           : "UPDATE jobs SET state = ?2, job = ?5, updated_at = ?7 WHERE id = ?1";
  Stmt s(db_, sql);
  if (!s.ok()) return Error("prepare");
  std::string bytes;
  if (!job.SerializeToString(&bytes)) return internal("job store: cannot serialize job");
  s.bind_text(1, job.id());
  s.bind_int(2, job.state());
  if (insert) {
    if (job.client_request_id().empty()) {
      s.bind_null(3);
    } else {
      s.bind_text(3, job.client_request_id());
    }
    s.bind_int(6, timestamp_ms(job.created_at()));
    // The spec is fixed at submission: an update leaves spec_json alone (converting the
    // spec to JSON was half the time of every event's transaction).
    s.bind_text(4, engine::job_spec_to_json(job.spec()));
  }
  s.bind_blob(5, bytes);
  s.bind_int(7, now_ms());
  if (s.step() != SQLITE_DONE) return Error(insert ? "insert job " + job.id() : "update job");
  if (!insert && sqlite3_changes(db_) != 1) return not_found("job " + job.id() + " not found");
  return Status::ok_status();
}

Status JobStore::put_event(const JobEvent& event) {
  Stmt s(db_, "INSERT INTO events (job_id, seq, event) VALUES (?1, ?2, ?3)");
  if (!s.ok()) return Error("prepare");
  std::string bytes;
  if (!event.SerializeToString(&bytes)) return internal("job store: cannot serialize event");
  s.bind_text(1, event.job_id());
  s.bind_int(2, event.seq());
  s.bind_blob(3, bytes);
  if (s.step() != SQLITE_DONE) {
    return Error("insert event " + event.job_id() + "#" + std::to_string(event.seq()));
  }
  return Status::ok_status();
}

Status JobStore::insert_job(const Job& job, const JobEvent& first_event) {
  std::lock_guard<std::mutex> lock(mu_);
  return transaction(/*durable=*/true, [&] {
    AMPD_RETURN_IF_ERROR(put_job(job, /*insert=*/true));
    return put_event(first_event);
  });
}

Status JobStore::append_event(const Job& job, const JobEvent& event, bool durable) {
  std::lock_guard<std::mutex> lock(mu_);
  return transaction(durable, [&] {
    AMPD_RETURN_IF_ERROR(put_event(event));
    return put_job(job, /*insert=*/false);
  });
}

Status JobStore::update_job(const Job& job, bool durable) {
  std::lock_guard<std::mutex> lock(mu_);
  return transaction(durable, [&] { return put_job(job, /*insert=*/false); });
}

StatusOr<Job> JobStore::get_job(const std::string& id) {
  std::lock_guard<std::mutex> lock(mu_);
  Stmt s(db_, "SELECT job FROM jobs WHERE id = ?1");
  if (!s.ok()) return Error("prepare");
  s.bind_text(1, id);
  const int rc = s.step();
  if (rc == SQLITE_DONE) return not_found("job " + id + " not found");
  if (rc != SQLITE_ROW) return Error("get job");
  return parse_job(s.column_blob(0));
}

StatusOr<std::optional<Job>> JobStore::find_by_client_request_id(const std::string& request_id) {
  std::lock_guard<std::mutex> lock(mu_);
  Stmt s(db_, "SELECT job FROM jobs WHERE client_request_id = ?1");
  if (!s.ok()) return Error("prepare");
  s.bind_text(1, request_id);
  const int rc = s.step();
  if (rc == SQLITE_DONE) return std::optional<Job>();
  if (rc != SQLITE_ROW) return Error("find job by client_request_id");
  AMPD_ASSIGN_OR_RETURN(Job job, parse_job(s.column_blob(0)));
  return std::optional<Job>(std::move(job));
}

StatusOr<std::vector<JobEvent>> JobStore::list_events(const std::string& job_id, int64_t after_seq,
                                                      int limit) {
  std::lock_guard<std::mutex> lock(mu_);
  Stmt s(db_, "SELECT event FROM events WHERE job_id = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3");
  if (!s.ok()) return Error("prepare");
  s.bind_text(1, job_id);
  s.bind_int(2, after_seq);
  s.bind_int(3, limit);
  std::vector<JobEvent> out;
  int rc;
  while ((rc = s.step()) == SQLITE_ROW) {
    JobEvent e;
    if (!e.ParseFromString(s.column_blob(0))) return data_loss("job store: unreadable event");
    out.push_back(std::move(e));
  }
  if (rc != SQLITE_DONE) return Error("list events");
  return out;
}

StatusOr<int64_t> JobStore::last_seq(const std::string& job_id) {
  std::lock_guard<std::mutex> lock(mu_);
  Stmt s(db_, "SELECT COALESCE(MAX(seq), 0) FROM events WHERE job_id = ?1");
  if (!s.ok()) return Error("prepare");
  s.bind_text(1, job_id);
  if (s.step() != SQLITE_ROW) return Error("last seq");
  return s.column_int(0);
}

StatusOr<std::vector<Job>> JobStore::list_jobs(const std::vector<ampd::v1::JobState>& states,
                                               const std::string& after_id, int limit) {
  std::lock_guard<std::mutex> lock(mu_);
  // The state filter is a bit mask so that one statement serves every combination.
  int64_t mask = 0;
  for (ampd::v1::JobState st : states) mask |= int64_t{1} << static_cast<int>(st);
  Stmt s(db_,
         "SELECT job FROM jobs WHERE id > ?1 AND (?2 = 0 OR ((?2 >> state) & 1) = 1) "
         "ORDER BY id LIMIT ?3");
  if (!s.ok()) return Error("prepare");
  s.bind_text(1, after_id);
  s.bind_int(2, mask);
  s.bind_int(3, limit);
  std::vector<Job> out;
  int rc;
  while ((rc = s.step()) == SQLITE_ROW) {
    AMPD_ASSIGN_OR_RETURN(Job job, parse_job(s.column_blob(0)));
    out.push_back(std::move(job));
  }
  if (rc != SQLITE_DONE) return Error("list jobs");
  return out;
}

StatusOr<std::string> JobStore::max_job_id() {
  std::lock_guard<std::mutex> lock(mu_);
  Stmt s(db_, "SELECT COALESCE(MAX(id), '') FROM jobs");
  if (!s.ok()) return Error("prepare");
  if (s.step() != SQLITE_ROW) return Error("max job id");
  return s.column_text(0);
}

StatusOr<std::vector<std::pair<ampd::v1::JobState, int64_t>>> JobStore::count_by_state() {
  std::lock_guard<std::mutex> lock(mu_);
  Stmt s(db_, "SELECT state, COUNT(*) FROM jobs GROUP BY state");
  if (!s.ok()) return Error("prepare");
  std::vector<std::pair<ampd::v1::JobState, int64_t>> out;
  int rc;
  while ((rc = s.step()) == SQLITE_ROW) {
    out.emplace_back(static_cast<ampd::v1::JobState>(s.column_int(0)), s.column_int(1));
  }
  if (rc != SQLITE_DONE) return Error("count jobs by state");
  return out;
}

}  // namespace ampd::server
