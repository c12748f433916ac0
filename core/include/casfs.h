/*
 * casfs.h — the public interface of libcasfs, the content-addressed store.
 *
 * A *root* is a place that holds stores (today: a local directory).  A
 * *store* keeps every blob once under the lowercase hex digest of its bytes
 * (sha256 by default, sha1 for Theater stores) and maps human *labels* to
 * digests.  The on-disk layout is the one of the Theater actor runtime; see
 * casfs(7) and SPEC §2.
 *
 * Conventions, as in libgit2:
 *   - every public function is casfs_<module>_<verb>();
 *   - handles are opaque; out-parameters come first; each *_open() has a
 *     matching *_free();
 *   - functions return 0 (or a documented positive value) on success and a
 *     negative errno value on failure (-EINVAL, -ENOENT, -ENOSPC, ...); the
 *     detail of the last failure on the calling thread is kept and read back
 *     with casfs_error_last();
 *   - nothing here prints or exits; every handle may be shared by threads.
 */
#ifndef CASFS_H
#define CASFS_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <time.h>

#ifdef __cplusplus
extern "C" {
#endif

#define CASFS_VERSION "0.1.0"

/* Room for the longest digest (sha256: 64 hex digits) and its NUL. */
#define CASFS_HEX_MAX 65
/* Longest store id and longest label name, in bytes (no NUL). */
#define CASFS_ID_MAX 255
#define CASFS_LABEL_MAX 4095

typedef struct casfs_root casfs_root;
typedef struct casfs_store casfs_store;
typedef struct casfs_writer casfs_writer;

typedef enum casfs_algo {
	CASFS_SHA256 = 0,
	CASFS_SHA1 = 1,
} casfs_algo;

/* ------------------------------------------------------------------ errors */

/* The message of the last failure on this thread ("" if none). */
const char *casfs_error_last(void);
/* Forget the last failure on this thread. */
void casfs_error_clear(void);

/* ----------------------------------------------------------------- helpers */

/* "sha256" / "sha1"; NULL for an unknown value. */
const char *casfs_algo_name(casfs_algo algo);
/* Parses "sha256" or "sha1"; -EINVAL otherwise. */
int casfs_algo_parse(casfs_algo *out, const char *name);
/* Number of hex digits of a digest of this algorithm (64 or 40). */
size_t casfs_algo_hexlen(casfs_algo algo);

/* 0 if id is a valid store id (SPEC §2), else -EINVAL/-ENAMETOOLONG. */
int casfs_id_check(const char *id);
/* 0 if name is a valid label name, else -EINVAL/-ENAMETOOLONG. */
int casfs_label_check(const char *name);
/* 0 if hex is a lowercase digest of the right length for algo, else -EINVAL. */
int casfs_digest_check(casfs_algo algo, const char *hex);

/* Called once per name by the list functions; a non-zero return stops the
 * walk and is returned by the list function. */
typedef int (*casfs_name_fn)(const char *name, void *ud);

/* Caller identity recorded in the journal for operations made by this thread
 * (the filesystem sets it per request).  uid/pid -1 means "not recorded". */
void casfs_caller_set(long uid, long pid);

/* ------------------------------------------------------------------- roots */

enum {
	/* Create the root directory (and parents) if it is missing. */
	CASFS_ROOT_CREATE = 1 << 0,
	/* Do not fsync: faster, but a power cut may lose or garble recent
	 * blobs and labels.  For scratch roots and benchmarks only. */
	CASFS_ROOT_NOSYNC = 1 << 1,
};

/* Opens the root at path: a local directory, or "rados:POOL" /
 * "rados:POOL/NAMESPACE" for a Ceph RADOS pool (see casfs(7)). */
int casfs_root_open(casfs_root **out, const char *path, unsigned flags);
/* Same, with options: a NULL-terminated array of "key=value" strings.
 * For rados roots: ceph_conf (default $CEPH_CONF, then Ceph's own search),
 * ceph_id (client name without "client.", default $CEPH_ID or "admin"),
 * ceph_timeout (seconds an operation waits for the cluster, default 30),
 * cache_dir (local cache of blob chunks and staging files) and cache_size
 * (its bound in bytes, with K/M/G suffixes).  An option the backend does
 * not take is an error (-EINVAL). */
int casfs_root_open_opts(casfs_root **out, const char *path, unsigned flags,
			 const char *const *opts);
/* "dir" or "rados". */
const char *casfs_root_backend(const casfs_root *root);
/* A local directory that stands for the root: the root itself, or for a
 * remote root its cache directory (where writes are staged, so its free
 * space bounds them). */
const char *casfs_root_local_dir(const casfs_root *root);
void casfs_root_free(casfs_root *root);

/* Creates a store.  id NULL or "" makes a fresh UUID.  The id actually used is
 * copied into id_out (at least CASFS_ID_MAX + 1 bytes) if it is not NULL.
 * -EEXIST if the store exists. */
int casfs_store_create(casfs_root *root, const char *id, casfs_algo algo,
		       char *id_out, size_t id_out_size);
/* Removes a store that holds no blob and no label; -ENOTEMPTY otherwise. */
int casfs_store_remove(casfs_root *root, const char *id);
/* Calls fn for each store id, in no particular order. */
int casfs_store_list(casfs_root *root, casfs_name_fn fn, void *ud);

/* ------------------------------------------------------------------ stores */

/* Opens a store; -ENOENT if it does not exist.  A directory without .casfs/
 * is opened as a Theater store (sha1). */
int casfs_store_open(casfs_store **out, casfs_root *root, const char *id);
void casfs_store_free(casfs_store *store);
casfs_algo casfs_store_algo(const casfs_store *store);
const char *casfs_store_id(const casfs_store *store);

/* Removes staging files left by dead writers (crashed processes).  Files of
 * live writers, in this or another process, are left alone.  The number
 * removed goes to *removed if not NULL. */
int casfs_store_clean_staging(casfs_store *store, unsigned *removed);

/* Sessions, for long-lived users such as the filesystem daemon (SPEC §6):
 * a session marks the store as in use until it ends cleanly.  Beginning
 * one reports, in *unclean_since, the start time (ns since the epoch) of
 * the oldest earlier session that never ended (its process died), or the
 * last mark it recorded with casfs_store_sync() if later, or 0:
 * blobs stored or freshened since then deserve a check before they are
 * served.  *session is a token for casfs_store_session_end(). */
int casfs_store_session_begin(casfs_store *store, int *session, int64_t *unclean_since);
void casfs_store_session_end(casfs_store *store, int session);

/* Deferred durability, the filesystem daemon's default (SPEC §6, casfs(7)):
 * on a store handle with on non-zero, blobs and labels are published without
 * waiting for the disk, and casfs_store_sync() makes all of them durable at
 * once.  Use it only with a session, so that an unclean stop is noticed and
 * what was published after the last sync is checked.  Stores of a root
 * opened CASFS_ROOT_NOSYNC never sync; rados: roots are durable as they go. */
void casfs_store_defer_sync(casfs_store *store, int on);
/* Makes durable every change published through this store handle (one
 * syncfs(2) on a directory root) and records in the session (from
 * casfs_store_session_begin, or -1) that blobs stored before then are safe:
 * a later casfs_store_session_begin() after an unclean stop reports that
 * time, less a second of slack, rather than the session's start.  Nothing
 * to do (no change since the last call) returns 0 at once.  Once a sync
 * has failed (a write the disk did not take), every later call on this
 * handle fails with that error and records nothing: the session keeps the
 * last good mark, so what came after it is checked after the next start. */
int casfs_store_sync(casfs_store *store, int session);

/* Moves a blob aside into .casfs/quarantine/ (as fsck --repair does). */
int casfs_blob_quarantine(casfs_store *store, const char *hex);

/* ------------------------------------------------------------------- blobs */

/* Stores len bytes; the digest goes to hex_out.  Returns 0 if the blob was
 * new, 1 if it already existed (it is then only freshened). */
int casfs_blob_put(casfs_store *store, const void *buf, size_t len,
		   char hex_out[CASFS_HEX_MAX]);
/* Stores everything read from fd until end of file (any kind of fd: file,
 * pipe, socket).  Large inputs are hashed on a second thread while they are
 * written.  progress, if not NULL, is called now and then with the byte
 * count so far.  Same returns as casfs_blob_put. */
int casfs_blob_put_fd(casfs_store *store, int fd, char hex_out[CASFS_HEX_MAX],
		      void (*progress)(uint64_t done, void *ud), void *ud);

/* 1 if the blob is stored, 0 if not, negative on error. */
int casfs_blob_exists(casfs_store *store, const char *hex);
/* Size of a stored blob; -ENOENT if absent. */
int casfs_blob_size(casfs_store *store, const char *hex, uint64_t *size);
/* Size and modification time (freshened when stored again) of a blob. */
int casfs_blob_stat(casfs_store *store, const char *hex, uint64_t *size, int64_t *mtime_ns);
/* Opens a stored blob for reading; the caller owns and closes *fd. */
int casfs_blob_open(casfs_store *store, const char *hex, int *fd);
/* A local file holding the part of the blob around off, fetching only that
 * part from a remote backend (a whole local blob otherwise): on success fd
 * (close it) holds the blob's bytes [*start, *start + *len) from its offset
 * 0, with *start <= off < *start + *len.  -ENXIO if off is at or past the
 * end. */
int casfs_blob_open_at(casfs_store *store, const char *hex, uint64_t off, int *fd,
		       uint64_t *start, uint64_t *len);
/* Hashes the blob open on fd (from casfs_blob_open): 0 if it matches hex,
 * -EIO if it does not. */
int casfs_blob_verify(casfs_store *store, const char *hex, int fd);
/* Copies the blob open on fd (from casfs_blob_open) to out, hashing it on
 * the way; -EIO if the content no longer matches hex (the bytes are then
 * already written: the caller must treat them as bad). */
int casfs_blob_verify_copy(casfs_store *store, const char *hex, int fd, int out);
/* Calls fn for each stored digest, in no particular order. */
int casfs_blob_list(casfs_store *store, casfs_name_fn fn, void *ud);
/* Sum of the sizes of all stored blobs. */
int casfs_store_total_size(casfs_store *store, uint64_t *bytes);

/* ----------------------------------------------------------------- writers */

/* A streaming writer: bytes written in order are hashed as they arrive, so
 * commit never reads them again.  Writes at other offsets (pwrite) and
 * truncation are allowed; the digest is then recomputed at commit. */
int casfs_writer_open(casfs_writer **out, casfs_store *store);
/* A writer whose first version starts as a copy of the stored blob hex
 * (copied on the first change; committing with no change gives hex). */
int casfs_writer_open_from(casfs_writer **out, casfs_store *store, const char *hex);
/* Appends n bytes. */
int casfs_writer_write(casfs_writer *w, const void *buf, size_t n);
/* Writes n bytes at offset off. */
int casfs_writer_pwrite(casfs_writer *w, const void *buf, size_t n,
			uint64_t off);
/* Appends everything readable from fd until end of file.  Large inputs
 * are hashed on a second thread while they are written.  progress, if not
 * NULL, gets the staged size now and then. */
int casfs_writer_write_fd(casfs_writer *w, int fd,
			  void (*progress)(uint64_t done, void *ud), void *ud);
/* Sets the staged size (as ftruncate). */
int casfs_writer_truncate(casfs_writer *w, uint64_t size);
/* Current staged size. */
uint64_t casfs_writer_size(const casfs_writer *w);
/* The staging file, for reading back what was written (do not close it). */
int casfs_writer_fd(const casfs_writer *w);
/* Finishes the digest and publishes the blob (durably unless the root is
 * CASFS_ROOT_NOSYNC).  The writer stays usable: later writes start a new
 * version from the current content.  Same returns as casfs_blob_put. */
int casfs_writer_commit(casfs_writer *w, char hex_out[CASFS_HEX_MAX]);
/* Discards what was not committed and frees the writer. */
void casfs_writer_free(casfs_writer *w);

/* Commits many writers at once: one filesystem sync for all of them instead
 * of one per blob.  hex_out[i] receives writer i's digest and ret_out[i] its
 * result (0 new, 1 existed, negative error).  Returns 0 if all succeeded,
 * else the first error. */
int casfs_writer_commit_many(casfs_writer **ws, size_t n,
			     char (*hex_out)[CASFS_HEX_MAX], int *ret_out);

/* ------------------------------------------------------------------ labels */

/* The digest a label points at; -ENOENT if there is no such label (an empty
 * label file counts as none). */
int casfs_label_get(casfs_store *store, const char *name,
		    char hex_out[CASFS_HEX_MAX]);

/*
 * Points a label at a stored digest (-ENOENT if the blob is absent).
 * expect selects a compare-and-swap:
 *   NULL      set it whatever it was;
 *   ""        only if the label does not exist yet (else -EEXIST);
 *   CASFS_LABEL_EXISTS  only if the label exists (else -ENOENT);
 *   a digest  only if the label points at it now (else -ESTALE, or -ENOENT
 *             if the label does not exist).
 * The previous digest ("" if none) goes to old_out if not NULL.
 */
#define CASFS_LABEL_EXISTS ((const char *)1)
int casfs_label_set(casfs_store *store, const char *name, const char *hex,
		    const char *expect, char old_out[CASFS_HEX_MAX]);
/* Removes a label (-ENOENT if none); expect as for casfs_label_set. */
int casfs_label_remove(casfs_store *store, const char *name,
		       const char *expect, char old_out[CASFS_HEX_MAX]);
/* Moves a label to a new name atomically, replacing any label there. */
int casfs_label_rename(casfs_store *store, const char *from, const char *to);
/* Calls fn for each label ("a/b" for nested ones), in no particular order. */
int casfs_label_list(casfs_store *store, casfs_name_fn fn, void *ud);

/* What a filesystem needs to show labels as files and directories. */
typedef struct casfs_label_info {
	char digest[CASFS_HEX_MAX]; /* "" for a directory (or an empty label) */
	int is_dir;
	uint32_t mode;              /* permission bits, kept per label */
	int64_t mtime_ns;           /* last change (or as set by setattr) */
	int64_t ctime_ns;
	uint32_t uid, gid;
} casfs_label_info;

/* Attributes of a label or label directory; name "" is the top directory.
 * -ENOENT if absent; a label file that holds no valid digest is -EINVAL. */
int casfs_label_stat(casfs_store *store, const char *name, casfs_label_info *out);
/* Sets the permission bits and/or the modification time of a label (NULL
 * leaves one unchanged).  They survive later changes of the label. */
int casfs_label_setattr(casfs_store *store, const char *name, const uint32_t *mode,
			const int64_t *mtime_ns);
/* Creates / removes an (empty) directory of labels. */
int casfs_label_mkdir(casfs_store *store, const char *name, uint32_t mode);
int casfs_label_rmdir(casfs_store *store, const char *name);
/* Calls fn for each immediate child of a label directory ("" = top), with
 * is_dir set for subdirectories.  Empty label files are not shown. */
typedef int (*casfs_dirent_fn)(const char *name, int is_dir, void *ud);
int casfs_label_readdir(casfs_store *store, const char *dir, casfs_dirent_fn fn, void *ud);
/* A stamp of the listing of data/ (dir NULL) or of a label directory
 * ("" = top), for a caller that keeps listings: it changes whenever an
 * entry is added, removed or renamed there, by anyone (for a directory
 * root it is the directory's ctime in nanoseconds).  It does not change
 * when a label file is rewritten in place (casfs never does; a Theater
 * runtime may), so a kept listing may then show a label that was emptied.
 * -ENOTSUP if the backend cannot tell (list again every time); -ENOENT if
 * the directory does not exist. */
int casfs_listing_stamp(casfs_store *store, const char *dir, int64_t *stamp);

/* Stores content read from fd and points a label at it, as one operation
 * that a concurrent gc cannot split.  expect as for casfs_label_set. */
int casfs_label_put_fd(casfs_store *store, const char *name, int fd,
		       const char *expect, char hex_out[CASFS_HEX_MAX],
		       void (*progress)(uint64_t done, void *ud), void *ud);
/* Same for a writer: commits it and points the label at the result. */
int casfs_label_commit(casfs_store *store, const char *name, casfs_writer *w,
		       const char *expect, char hex_out[CASFS_HEX_MAX]);
/* Same, and the label's permission bits and modification time (NULL: keep
 * the old bits; the time of the change) are set with it, in one step. */
int casfs_label_commit_attrs(casfs_store *store, const char *name, casfs_writer *w,
			     const char *expect, char hex_out[CASFS_HEX_MAX],
			     const uint32_t *mode, const int64_t *mtime_ns);

/* ------------------------------------------------------------- maintenance */

typedef struct casfs_gc_opts {
	/* Blobs younger than this (by mtime, refreshed whenever the same
	 * content is stored again) are kept even if no label reaches them. */
	uint64_t grace_seconds;
	int dry_run;
	void (*progress)(uint64_t done, uint64_t total, void *ud);
	void *ud;
} casfs_gc_opts;

typedef struct casfs_gc_result {
	uint64_t blobs_seen, blobs_removed, bytes_removed, blobs_kept_young;
} casfs_gc_result;

/* Deletes blobs that no label reaches and that are older than the grace
 * period.  Safe against concurrent label writers in any process. */
int casfs_gc(casfs_store *store, const casfs_gc_opts *opts,
	     casfs_gc_result *res);

enum casfs_fsck_kind {
	CASFS_FSCK_BAD_BLOB,      /* content does not match its name */
	CASFS_FSCK_STRAY_FILE,    /* a file in data/ that is not a digest */
	CASFS_FSCK_BAD_LABEL,     /* label file that is not a digest */
	CASFS_FSCK_DANGLING_LABEL, /* label naming an absent blob */
	CASFS_FSCK_DEBRIS,        /* staging file left by a dead writer */
};

typedef struct casfs_fsck_opts {
	/* Quarantine bad blobs and bad labels into .casfs/quarantine/. */
	int repair;
	/* Called for each problem found; name is a digest or label name. */
	void (*report)(enum casfs_fsck_kind kind, const char *name,
		       const char *detail, int repaired, void *ud);
	void (*progress)(uint64_t done, uint64_t total, void *ud);
	void *ud;
} casfs_fsck_opts;

typedef struct casfs_fsck_result {
	uint64_t blobs_checked, labels_checked;
	uint64_t bad_blobs, stray_files, bad_labels, dangling_labels;
	uint64_t debris_removed, repaired;
} casfs_fsck_result;

/* Re-hashes every blob and checks every label.  Returns 0 if the store is
 * sound (debris of dead writers is always cleared and does not count),
 * 1 if damage was found (repaired or not), negative on error. */
int casfs_fsck(casfs_store *store, const casfs_fsck_opts *opts,
	       casfs_fsck_result *res);

typedef struct casfs_stats {
	uint64_t blobs, labels, bytes;
	/* Bytes the labels reach, counting each label's blob once per label,
	 * minus the bytes of the distinct blobs they reach. */
	uint64_t bytes_saved;
	uint64_t labelled_bytes;
} casfs_stats;

int casfs_store_stats(casfs_store *store, casfs_stats *out);

/* Calls fn with each journal line (JSON, no newline), oldest first. */
int casfs_journal_read(casfs_store *store, casfs_name_fn fn, void *ud);

#ifdef __cplusplus
}
#endif
#endif
