/*
 * internal.h — what the parts of libcasfs share and nobody else sees.
 *
 * The library is split in two layers:
 *   - the generic layer (store.c, labels.c, maint.c, journal.c) knows the
 *     rules: names, digests, compare-and-swap, journal lines, gc and fsck;
 *   - a backend (backend_dir.c today, a RADOS one later) knows where bytes
 *     live.  Every on-disk detail is behind struct casfs_backend below, so a
 *     second backend is one more table, not a change to the callers.
 *
 * Staging is always a local file (for the directory backend it lives in the
 * store's .casfs/staging/, on the same filesystem, so that publishing is a
 * rename; a remote backend would stage locally and upload at publish).
 */
#ifndef CASFS_INTERNAL_H
#define CASFS_INTERNAL_H

#include "casfs.h"

#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>

#define CASFS_ATTR_PRINTF(a, b) __attribute__((format(printf, a, b)))

/* ----------------------------------------------------------------- errors */

/* Records a message for the calling thread and returns code (negative). */
int casfs__err(int code, const char *fmt, ...) CASFS_ATTR_PRINTF(2, 3);
/* Same, appending ": strerror(-code)". */
int casfs__errno(int code, const char *fmt, ...) CASFS_ATTR_PRINTF(2, 3);

/* ---------------------------------------------------------------- hashing */

typedef struct casfs_hash casfs_hash;
casfs_hash *casfs__hash_new(casfs_algo algo);
void casfs__hash_free(casfs_hash *h);
int casfs__hash_reset(casfs_hash *h);
int casfs__hash_update(casfs_hash *h, const void *buf, size_t n);
/* Writes the lowercase hex digest and resets nothing. */
int casfs__hash_final(casfs_hash *h, char hex[CASFS_HEX_MAX]);
/* Hashes everything readable from fd starting at offset 0 (pread). */
int casfs__hash_fd(casfs_algo algo, int fd, char hex[CASFS_HEX_MAX],
		   uint64_t *size);
int casfs__hash_buf(casfs_algo algo, const void *buf, size_t n,
		    char hex[CASFS_HEX_MAX]);

/* ------------------------------------------------------------------ misc */

/* Label files larger than this cannot hold a digest (plus white space):
 * readers refuse them with -EFBIG. */
#define CASFS__LABEL_FILE_MAX 4096

/* True for the ASCII white space a label file may carry around its digest. */
bool casfs__is_ws(char c);
/* Trims ASCII whitespace at both ends of buf[0..*len) in place. */
void casfs__trim(char *buf, size_t *len);
/* Seconds and nanoseconds since the epoch. */
int64_t casfs__now_ns(void);
/* n random lowercase hex digits into out (NUL-terminated). */
void casfs__randhex(char *out, size_t n);
/* getpid(), remembered (and forgotten at fork). */
long casfs__pid(void);
/* Full write / pread loops, returning 0 or -errno. */
int casfs__write_all(int fd, const void *buf, size_t n);
int casfs__pwrite_all(int fd, const void *buf, size_t n, uint64_t off);

/* --------------------------------------------------------------- staging */

struct casfs_stage {
	int fd;           /* read-write local file */
	char name[64];    /* backend's name for it */
	bool synced;      /* made durable by stage_sync */
};

/* ---------------------------------------------------------------- backend */

struct casfs_backend {
	const char *name;

	int (*root_open)(casfs_root *r, const char *spec);
	/* NULL for a local root (the spec is its directory). */
	const char *(*root_local_dir)(const casfs_root *r);
	void (*root_close)(casfs_root *r);
	int (*store_create)(casfs_root *r, const char *id, casfs_algo algo);
	int (*store_remove)(casfs_root *r, const char *id);
	int (*store_list)(casfs_root *r, casfs_name_fn fn, void *ud);
	/* Fills s->algo and s->b. */
	int (*store_open)(casfs_store *s);
	void (*store_close)(casfs_store *s);

	/* Staging files: created locked by this process; discarded or
	 * consumed by blob_publish. */
	int (*stage_create)(casfs_store *s, struct casfs_stage *st);
	void (*stage_discard)(casfs_store *s, struct casfs_stage *st);
	int (*stage_clean)(casfs_store *s, unsigned *removed);
	int (*session_begin)(casfs_store *s, int *session, int64_t *unclean_since);
	void (*session_end)(casfs_store *s, int session);
	/* Makes every change published so far durable; then, if session >= 0,
	 * records mark (ns since the epoch) in it: blobs older than the mark
	 * need no check after an unclean stop.  NULL: changes are durable as
	 * they are made. */
	int (*store_sync)(casfs_store *s, int session, int64_t mark);
	/* Makes the content of the staging files durable. */
	int (*stage_sync)(casfs_store *s, struct casfs_stage *const *st,
			  size_t n);
	/* Publishes a staged blob under hex and consumes the stage (its fd is
	 * closed).  0 if new, 1 if it existed (then freshened). */
	int (*blob_publish)(casfs_store *s, struct casfs_stage *st,
			    const char *hex);
	/* Makes the names published so far durable. */
	int (*publish_sync)(casfs_store *s);

	int (*blob_stat)(casfs_store *s, const char *hex, uint64_t *size,
			 int64_t *mtime_ns);
	int (*blob_open)(casfs_store *s, const char *hex, int *fd);
	/* Optional: a local file holding part of the blob, fetching only
	 * that part: fd holds bytes [*start, *start + *len) at offset 0,
	 * with *start <= off < *start + *len.  NULL: blob_open is local. */
	int (*blob_open_at)(casfs_store *s, const char *hex, uint64_t off, int *fd,
			    uint64_t *start, uint64_t *len);
	/* Lists the regular files in the blob area, valid names or not; with
	 * all, every entry (for fsck to report strays). */
	int (*blob_list)(casfs_store *s, bool all, casfs_name_fn fn, void *ud);
	/* Deletes the blob unless it was freshened at or after cutoff_ns:
	 * then -EAGAIN.  Its size goes to *size. */
	int (*blob_delete)(casfs_store *s, const char *hex, int64_t cutoff_ns,
			   uint64_t *size);
	/* Moves a blob (or any name in the blob area) aside. */
	int (*blob_quarantine)(casfs_store *s, const char *name);

	/* The store's writer lock, across threads and processes (and, for a
	 * shared backend, machines).  Label changes take it shared (they
	 * exclude each other by guarded writes, see label_write), gc and
	 * store removal exclusive.  A backend may make shared exclusive. */
	int (*lock)(casfs_store *s, bool exclusive, int *token);
	void (*unlock)(casfs_store *s, int token);

	/* Raw label content (up to size bytes, NUL-terminated); -ENOENT if
	 * absent, -EFBIG if larger than size - 1. */
	int (*label_read)(casfs_store *s, const char *name, char *buf,
			  size_t size, size_t *len);
	/* Atomically replaces or creates a label; caller holds the lock.
	 * cur is the digest the caller saw ("" for none): if the label no
	 * longer holds it, nothing changes and the result is -EAGAIN (the
	 * caller reads again).  The directory backend's exclusive lock makes
	 * that impossible; a shared backend guards the write itself.  mode
	 * and mtime_ns, if not NULL, are the new version's attributes (else
	 * it keeps the old permission bits, and is changed now). */
	int (*label_write)(casfs_store *s, const char *name, const char *hex, const char *cur,
			   const uint32_t *mode, const int64_t *mtime_ns);
	int (*label_delete)(casfs_store *s, const char *name, const char *cur);
	/* Renames a label or a whole directory of labels as one step. */
	int (*label_rename)(casfs_store *s, const char *from, const char *to);
	/* Every label file, empty ones included. */
	int (*label_list)(casfs_store *s, casfs_name_fn fn, void *ud);
	int (*label_quarantine)(casfs_store *s, const char *name);
	/* Attributes of a label file or label directory ("" = the top);
	 * digest is not filled in. */
	int (*label_stat)(casfs_store *s, const char *name, casfs_label_info *out);
	int (*label_setattr)(casfs_store *s, const char *name, const uint32_t *mode,
			     const int64_t *mtime_ns);
	int (*label_mkdir)(casfs_store *s, const char *name, uint32_t mode);
	int (*label_rmdir)(casfs_store *s, const char *name);
	/* Immediate children of a label directory ("" = the top), without
	 * Theater's "no label" files (empty or white space alone). */
	int (*label_readdir)(casfs_store *s, const char *dir, casfs_dirent_fn fn, void *ud);
	/* Optional: a stamp of the blob area (dir NULL) or of a label
	 * directory that changes whenever an entry is added, removed or
	 * renamed there.  NULL: the backend cannot tell (-ENOTSUP). */
	int (*listing_stamp)(casfs_store *s, const char *dir, int64_t *stamp);

	/* Appends a line; sync: make it durable before returning. */
	int (*journal_append)(casfs_store *s, const char *line, size_t len, bool sync);
	int (*journal_read)(casfs_store *s, casfs_name_fn fn, void *ud);
};

extern const struct casfs_backend casfs__backend_dir;
extern const struct casfs_backend casfs__backend_rados;

/* Root options ("key=value", see casfs_root_open_opts); a backend takes
 * the ones it knows and clears them, anything left is an error. */
struct casfs_root_opt {
	const char *key;
	const char *value;
	bool used;
};

struct casfs_root {
	const struct casfs_backend *be;
	unsigned flags;
	char *spec;
	struct casfs_root_opt *opts;
	size_t nopts;
	void *b;
};

/* The value of root option key (marked used), or NULL. */
const char *casfs__root_opt(casfs_root *r, const char *key);

struct casfs_store {
	casfs_root *root;
	const struct casfs_backend *be;
	casfs_algo algo;
	char id[CASFS_ID_MAX + 1];
	void *b;
	/* casfs_store_defer_sync(): changes are not synced as they are made
	 * but counted, and made durable by casfs_store_sync(). */
	bool defer_sync;
	uint64_t unsynced; /* changes counted (atomic) */
	uint64_t synced;   /* of which covered by the last casfs_store_sync() */
	/* The first failed casfs_store_sync(), for good (atomic): a writeback
	 * error is reported once, so a later sync "succeeds" without the lost
	 * writes; the mark must not move past them. */
	int sync_err;
};

/* The root was opened CASFS_ROOT_NOSYNC: never sync. */
static inline bool casfs__root_nosync(const casfs_store *s)
{
	return (s->root->flags & CASFS_ROOT_NOSYNC) != 0;
}

/* Whether a change just made is *not* to be synced now: the root is
 * NOSYNC, or the store defers its syncs (then the change is counted, so
 * that the next casfs_store_sync() knows it has work).  Every change ends
 * with such a question (after its last rename or write), so the count
 * moves after the change is visible. */
static inline bool casfs__nosync(casfs_store *s)
{
	if (casfs__root_nosync(s))
		return true;
	if (s->defer_sync) {
		__atomic_add_fetch(&s->unsynced, 1, __ATOMIC_RELEASE);
		return true;
	}
	return false;
}

/* --------------------------------------------------------------- journal */

struct casfs_event {
	const char *op;
	const char *digest;
	const char *label;
	const char *from; /* for renames: the label's previous name */
	const char *old;
	int result; /* 0 or negative errno */
};

/* Appends one line for ev to the store's journal.  Never fails the
 * operation it records: a journal error is returned for the caller to keep
 * or drop, and the thread's last error is left as it was. */
int casfs__journal(casfs_store *s, const struct casfs_event *ev);
/* Convenience: journal and return result. */
int casfs__journal_ret(casfs_store *s, const char *op, const char *label,
		       const char *digest, const char *old, int result);

/* ---------------------------------------------------------------- writers */

/* Finishes the digest and makes the staged bytes durable, publishing
 * nothing.  0 if there is a staged version to publish, 1 if the writer has
 * nothing new (hex is then the committed digest). */
int casfs__writer_prepare(casfs_writer *w, char hex[CASFS_HEX_MAX]);
/* Publishes what casfs__writer_prepare() finished. */
int casfs__writer_publish(casfs_writer *w, const char *hex);

#endif
