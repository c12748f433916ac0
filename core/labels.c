/*
 * labels.c — human names for digests: get, compare-and-swap set and
 * remove, rename, list, and "store then label" as one step.
 *
 * Every change holds the store's writer lock (the one gc holds), checks the
 * blob exists under it, and records old and new digest in the journal, so a
 * label never names a blob gc removed and no label history is lost.
 */
#include "internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Reads and parses a label; -ENOENT if absent or empty. */
static int label_read(casfs_store *s, const char *name, char hex[CASFS_HEX_MAX])
{
	char buf[CASFS__LABEL_FILE_MAX + 1];
	size_t len = 0;
	int rc = s->be->label_read(s, name, buf, sizeof(buf), &len);
	if (rc < 0)
		return rc;
	casfs__trim(buf, &len);
	if (len == 0)
		return -ENOENT; /* Theater: an empty label file means no label */
	/* Exactly one digest and nothing else (a NUL would hide the rest from
	 * string functions). */
	if (len != casfs_algo_hexlen(s->algo) || memchr(buf, '\0', len) ||
	    casfs_digest_check(s->algo, buf) < 0)
		return casfs__err(-EINVAL, "label '%s' does not hold a %s digest", name,
				  casfs_algo_name(s->algo));
	memcpy(hex, buf, len + 1);
	return 0;
}

int casfs_label_get(casfs_store *s, const char *name, char hex_out[CASFS_HEX_MAX])
{
	int rc = casfs_label_check(name);
	if (rc < 0)
		return rc;
	rc = label_read(s, name, hex_out);
	if (rc == -ENOENT)
		return casfs__err(-ENOENT, "no label '%s' in store '%s'", name, s->id);
	return rc;
}

/* Checks the current digest cur ("" if none) against expect. */
static int check_expect(const char *name, const char *cur, const char *expect)
{
	if (!expect)
		return 0;
	if (expect == CASFS_LABEL_EXISTS) {
		if (!cur[0])
			return casfs__err(-ENOENT, "no label '%s'", name);
		return 0;
	}
	if (!expect[0]) {
		if (cur[0])
			return casfs__err(-EEXIST, "label '%s' already exists (it points at %s)", name, cur);
		return 0;
	}
	if (!cur[0])
		return casfs__err(-ENOENT, "no label '%s' (expected it to point at %s)", name, expect);
	if (strcmp(cur, expect) != 0)
		return casfs__err(-ESTALE, "label '%s' changed: it points at %s, not %s", name, cur, expect);
	return 0;
}

static int check_expect_arg(casfs_store *s, const char *expect)
{
	if (!expect || expect == CASFS_LABEL_EXISTS || !expect[0])
		return 0;
	return casfs_digest_check(s->algo, expect);
}

/* Reads the current digest into cur ("" if none) for a locked change. */
static int current(casfs_store *s, const char *name, char cur[CASFS_HEX_MAX])
{
	int rc = label_read(s, name, cur);
	if (rc == -ENOENT) {
		cur[0] = '\0';
		return 0;
	}
	if (rc == -EINVAL || rc == -EFBIG) {
		/* Garbage in the label file: it may be replaced or removed
		 * (the journal keeps that it was garbage). */
		cur[0] = '\0';
		return 0;
	}
	return rc;
}

/* How often a guarded label change is retried when others keep changing
 * the label between our read and our write. */
#define GUARD_TRIES 1000

static int contended(const char *name)
{
	return casfs__err(-EBUSY, "label '%s' keeps changing under us: gave up", name);
}

/* What a commit knows already when it sets the label, and what it sets
 * with it. */
struct set_how {
	bool blob_known;      /* just published (or found) under the lock */
	bool cur_known;       /* cur was read under the lock */
	const uint32_t *mode; /* permission bits (NULL: keep the old ones) */
	const int64_t *mtime; /* modification time (NULL: now) */
};

/* The locked part of a set: blob present, expectation met, write. */
static int set_locked(casfs_store *s, const char *name, const char *hex, const char *expect,
		      char cur[CASFS_HEX_MAX], const struct set_how *how)
{
	static const struct set_how plain;
	if (!how)
		how = &plain;
	int rc = how->blob_known ? 0 : s->be->blob_stat(s, hex, NULL, NULL);
	if (rc == -ENOENT)
		return casfs__err(-ENOENT, "no blob %s in store '%s'", hex, s->id);
	if (rc < 0)
		return rc;
	for (int tries = 0; tries < GUARD_TRIES; tries++) {
		if ((tries > 0 || !how->cur_known) && (rc = current(s, name, cur)) < 0)
			return rc;
		if ((rc = check_expect(name, cur, expect)) < 0)
			return rc;
		if (strcmp(cur, hex) == 0) /* already there: only the attributes */
			return how->mode || how->mtime ? s->be->label_setattr(s, name, how->mode, how->mtime) : 0;
		/* -EAGAIN: changed by someone else since we read it (only on
		 * a backend shared by machines): decide again. */
		if ((rc = s->be->label_write(s, name, hex, cur, how->mode, how->mtime)) != -EAGAIN)
			return rc;
	}
	return contended(name);
}

int casfs_label_set(casfs_store *s, const char *name, const char *hex, const char *expect,
		    char old_out[CASFS_HEX_MAX])
{
	char cur[CASFS_HEX_MAX] = "";
	int rc = casfs_label_check(name);
	if (rc == 0)
		rc = casfs_digest_check(s->algo, hex);
	if (rc == 0)
		rc = check_expect_arg(s, expect);
	if (rc < 0)
		return casfs__journal_ret(s, "label", name, hex, NULL, rc);
	int token;
	if ((rc = s->be->lock(s, false, &token)) == 0) {
		rc = set_locked(s, name, hex, expect, cur, NULL);
		s->be->unlock(s, token);
	}
	if (old_out)
		strcpy(old_out, cur);
	return casfs__journal_ret(s, "label", name, hex, cur[0] ? cur : NULL, rc);
}

int casfs_label_remove(casfs_store *s, const char *name, const char *expect,
		       char old_out[CASFS_HEX_MAX])
{
	char cur[CASFS_HEX_MAX] = "";
	int rc = casfs_label_check(name);
	if (rc == 0)
		rc = check_expect_arg(s, expect);
	if (rc < 0)
		return casfs__journal_ret(s, "remove-label", name, NULL, NULL, rc);
	int token;
	if ((rc = s->be->lock(s, false, &token)) == 0) {
		for (int tries = 0;; tries++) {
			if (tries == GUARD_TRIES) {
				rc = contended(name);
				break;
			}
			rc = current(s, name, cur);
			if (rc == 0)
				rc = check_expect(name, cur, expect ? expect : CASFS_LABEL_EXISTS);
			if (rc == 0) {
				rc = s->be->label_delete(s, name, cur);
				if (rc == -ENOENT)
					rc = casfs__err(-ENOENT, "no label '%s'", name);
			} else if (rc == -ENOENT && !cur[0]) {
				/* An empty label file is no label, but remove it too. */
				int d = s->be->label_delete(s, name, "");
				if (d == 0)
					rc = 0;
				else if (d != -EAGAIN)
					casfs__err(-ENOENT, "no label '%s' in store '%s'", name, s->id);
				else
					rc = d;
			}
			if (rc != -EAGAIN)
				break;
		}
		s->be->unlock(s, token);
	}
	if (old_out)
		strcpy(old_out, cur);
	return casfs__journal_ret(s, "remove-label", name, NULL, cur[0] ? cur : NULL, rc);
}

int casfs_label_rename(casfs_store *s, const char *from, const char *to)
{
	char hex[CASFS_HEX_MAX] = "", old[CASFS_HEX_MAX] = "";
	int rc = casfs_label_check(from);
	if (rc == 0)
		rc = casfs_label_check(to);
	int token;
	if (rc == 0 && (rc = s->be->lock(s, false, &token)) == 0) {
		rc = label_read(s, from, hex);
		bool is_dir = rc == -EISDIR; /* a directory of labels moves whole */
		if (is_dir)
			rc = 0;
		if (rc == -ENOENT)
			rc = casfs__err(-ENOENT, "no label '%s'", from);
		if (rc == 0 && !is_dir)
			rc = current(s, to, old);
		if (rc == 0 && strcmp(from, to) != 0)
			rc = s->be->label_rename(s, from, to);
		s->be->unlock(s, token);
	}
	struct casfs_event ev = {
		.op = "rename-label", .label = to, .from = from,
		.digest = hex[0] ? hex : NULL, .old = old[0] ? old : NULL, .result = rc,
	};
	casfs__journal(s, &ev);
	return rc;
}

struct label_filter {
	casfs_store *s;
	casfs_name_fn fn;
	void *ud;
};

static int only_labels(const char *name, void *ud)
{
	struct label_filter *f = ud;
	char hex[CASFS_HEX_MAX];
	/* Skip files that cannot be label names, and those that are
	 * Theater's "no label" (empty or only white space).  Damaged ones
	 * are listed: get reports them. */
	if (casfs_label_check(name) < 0 || label_read(f->s, name, hex) == -ENOENT)
		return 0;
	return f->fn(name, f->ud);
}

int casfs_label_list(casfs_store *s, casfs_name_fn fn, void *ud)
{
	struct label_filter f = { s, fn, ud };
	int rc = s->be->label_list(s, only_labels, &f);
	if (rc >= 0)
		casfs_error_clear();
	return rc;
}

/* Publishes a prepared writer and points name at it under the lock. */
static int label_commit_prepared(casfs_store *s, const char *name, casfs_writer *w, int prep,
				 const char *hex, const char *expect, char cur[CASFS_HEX_MAX],
				 const uint32_t *mode, const int64_t *mtime)
{
	int token;
	int rc = s->be->lock(s, false, &token);
	if (rc < 0)
		return rc;
	/* A failed expectation publishes nothing: bad input changes nothing. */
	if ((rc = current(s, name, cur)) == 0)
		rc = check_expect(name, cur, expect);
	if (rc < 0) {
		s->be->unlock(s, token);
		return rc;
	}
	if (prep == 0) {
		rc = casfs__writer_publish(w, hex);
		if (rc >= 0)
			rc = s->be->publish_sync(s);
	}
	struct set_how how = { .blob_known = prep == 0, .cur_known = true, .mode = mode, .mtime = mtime };
	if (rc >= 0)
		rc = set_locked(s, name, hex, expect, cur, &how);
	s->be->unlock(s, token);
	return rc;
}

int casfs_label_commit_attrs(casfs_store *s, const char *name, casfs_writer *w, const char *expect,
			     char hex_out[CASFS_HEX_MAX], const uint32_t *mode, const int64_t *mtime_ns)
{
	char hex[CASFS_HEX_MAX] = "", cur[CASFS_HEX_MAX] = "";
	int rc = casfs_label_check(name);
	if (rc == 0)
		rc = check_expect_arg(s, expect);
	/* Hash and sync outside the lock: only the rename and the label
	 * write hold it. */
	int prep = rc < 0 ? rc : casfs__writer_prepare(w, hex);
	if (prep < 0)
		rc = prep;
	else
		rc = label_commit_prepared(s, name, w, prep, hex, expect, cur, mode, mtime_ns);
	if (rc >= 0 && hex_out)
		strcpy(hex_out, hex);
	return casfs__journal_ret(s, "store-at-label", name, hex[0] ? hex : NULL,
				  cur[0] ? cur : NULL, rc < 0 ? rc : 0);
}

int casfs_label_commit(casfs_store *s, const char *name, casfs_writer *w, const char *expect,
		       char hex_out[CASFS_HEX_MAX])
{
	return casfs_label_commit_attrs(s, name, w, expect, hex_out, NULL, NULL);
}

int casfs_label_put_fd(casfs_store *s, const char *name, int fd, const char *expect,
		       char hex_out[CASFS_HEX_MAX], void (*progress)(uint64_t, void *), void *ud)
{
	int rc = casfs_label_check(name);
	if (rc == 0)
		rc = check_expect_arg(s, expect);
	if (rc < 0)
		return casfs__journal_ret(s, "store-at-label", name, NULL, NULL, rc);
	casfs_writer *w;
	if ((rc = casfs_writer_open(&w, s)) < 0)
		return casfs__journal_ret(s, "store-at-label", name, NULL, NULL, rc);
	rc = casfs_writer_write_fd(w, fd, progress, ud);
	if (rc < 0)
		casfs__journal_ret(s, "store-at-label", name, NULL, NULL, rc);
	else
		rc = casfs_label_commit(s, name, w, expect, hex_out);
	casfs_writer_free(w);
	return rc;
}

/* ------------------------------------------------ labels as a file tree */

/* "" (the top) or a valid label name. */
static int check_dir_name(const char *name)
{
	return name && !name[0] ? 0 : casfs_label_check(name);
}

int casfs_label_stat(casfs_store *s, const char *name, casfs_label_info *out)
{
	int rc = check_dir_name(name);
	if (rc < 0)
		return rc;
	if ((rc = s->be->label_stat(s, name, out)) < 0)
		return rc;
	if (!out->is_dir) {
		rc = label_read(s, name, out->digest);
		if (rc < 0)
			return rc;
	}
	return 0;
}

int casfs_label_setattr(casfs_store *s, const char *name, const uint32_t *mode,
			const int64_t *mtime_ns)
{
	int rc = check_dir_name(name);
	if (rc < 0)
		return rc;
	if (!name[0])
		return casfs__err(-EPERM, "the top label directory has fixed attributes");
	int token;
	if ((rc = s->be->lock(s, false, &token)) < 0)
		return rc;
	rc = s->be->label_setattr(s, name, mode, mtime_ns);
	s->be->unlock(s, token);
	return rc;
}

/* Makes or removes a label directory under the writer lock, journaled. */
static int label_dir_change(casfs_store *s, const char *name, bool make, uint32_t mode)
{
	int rc = casfs_label_check(name);
	if (rc < 0)
		return rc;
	int token;
	if ((rc = s->be->lock(s, false, &token)) < 0)
		return rc;
	rc = make ? s->be->label_mkdir(s, name, mode) : s->be->label_rmdir(s, name);
	s->be->unlock(s, token);
	return casfs__journal_ret(s, make ? "mkdir-label" : "rmdir-label", name, NULL, NULL, rc);
}

int casfs_label_mkdir(casfs_store *s, const char *name, uint32_t mode)
{
	return label_dir_change(s, name, true, mode);
}

int casfs_label_rmdir(casfs_store *s, const char *name)
{
	return label_dir_change(s, name, false, 0);
}

int casfs_listing_stamp(casfs_store *s, const char *dir, int64_t *stamp)
{
	int rc = dir ? check_dir_name(dir) : 0;
	if (rc < 0)
		return rc;
	if (!s->be->listing_stamp)
		return casfs__err(-ENOTSUP, "the %s backend keeps no listing stamps", s->be->name);
	return s->be->listing_stamp(s, dir, stamp);
}

int casfs_label_readdir(casfs_store *s, const char *dir, casfs_dirent_fn fn, void *ud)
{
	int rc = check_dir_name(dir);
	if (rc < 0)
		return rc;
	/* The backend leaves out Theater's "no label" files itself: it can
	 * tell most labels by their size, without reading them. */
	rc = s->be->label_readdir(s, dir, fn, ud);
	if (rc >= 0)
		casfs_error_clear();
	return rc;
}
