/*
 * maint.c — keeping a store healthy: gc, fsck and stats.
 *
 * gc holds the store's writer lock from the moment it reads the labels until
 * its last deletion, so no label can be pointed at a blob it is removing;
 * blobs stored but not yet labelled are protected by the grace period, which
 * storing the same content again refreshes ("freshening").
 */
#include "internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* --------------------------------------------------------- digest vectors */

struct hexvec {
	char (*v)[CASFS_HEX_MAX];
	size_t n, cap;
};

static int hexvec_add(struct hexvec *hv, const char *hex)
{
	if (hv->n == hv->cap) {
		size_t cap = hv->cap ? hv->cap * 2 : 1024;
		void *p = realloc(hv->v, cap * sizeof(*hv->v));
		if (!p)
			return casfs__err(-ENOMEM, "out of memory");
		hv->v = p;
		hv->cap = cap;
	}
	snprintf(hv->v[hv->n++], CASFS_HEX_MAX, "%s", hex);
	return 0;
}

static int hexcmp(const void *a, const void *b)
{
	return strcmp(a, b);
}

static void hexvec_sort(struct hexvec *hv)
{
	if (hv->n)
		qsort(hv->v, hv->n, sizeof(*hv->v), hexcmp);
}

static bool hexvec_has(const struct hexvec *hv, const char *hex)
{
	return hv->n && bsearch(hex, hv->v, hv->n, sizeof(*hv->v), hexcmp) != NULL;
}

static void hexvec_free(struct hexvec *hv)
{
	free(hv->v);
	hv->v = NULL;
	hv->n = hv->cap = 0;
}

static int collect_blob(const char *name, void *ud)
{
	return hexvec_add(ud, name);
}

struct label_walk {
	casfs_store *s;
	struct hexvec digests;  /* one per label, with repeats */
	uint64_t labels;
	int err;                /* first unreadable label, for gc */
	char bad[CASFS_LABEL_MAX + 1];
};

static int collect_label(const char *name, void *ud)
{
	struct label_walk *lw = ud;
	char hex[CASFS_HEX_MAX];
	int rc = casfs_label_get(lw->s, name, hex);
	if (rc == -ENOENT)
		return 0;
	if (rc < 0) {
		if (rc != -EINVAL && rc != -EFBIG && !lw->err) {
			lw->err = rc;
			snprintf(lw->bad, sizeof(lw->bad), "%s", name);
		}
		return 0;
	}
	lw->labels++;
	return hexvec_add(&lw->digests, hex);
}

/* -------------------------------------------------------------------- gc */

int casfs_gc(casfs_store *s, const casfs_gc_opts *opts, casfs_gc_result *res)
{
	casfs_gc_opts o = { .grace_seconds = 3600 };
	if (opts)
		o = *opts;
	casfs_gc_result r = { 0 };
	struct label_walk lw = { .s = s };
	struct hexvec blobs = { 0 };
	int token, rc = s->be->lock(s, true, &token);
	if (rc < 0)
		return rc;
	int64_t cutoff = casfs__now_ns() - (int64_t)o.grace_seconds * 1000000000LL;
	/* Every label must be read: a label we could not read might reach a
	 * blob, so any failure stops gc before it deletes anything. */
	rc = casfs_label_list(s, collect_label, &lw);
	if (rc == 0 && lw.err)
		rc = casfs__errno(lw.err, "gc stopped: cannot read label '%s'", lw.bad);
	if (rc == 0)
		rc = casfs_blob_list(s, collect_blob, &blobs);
	if (rc < 0)
		goto out;
	hexvec_sort(&lw.digests);
	for (size_t i = 0; i < blobs.n; i++) {
		const char *hex = blobs.v[i];
		r.blobs_seen++;
		if (o.progress)
			o.progress(i + 1, blobs.n, o.ud);
		if (hexvec_has(&lw.digests, hex))
			continue;
		uint64_t size = 0;
		int64_t mtime;
		if (o.dry_run) {
			if (s->be->blob_stat(s, hex, &size, &mtime) < 0)
				continue;
			if (mtime >= cutoff) {
				r.blobs_kept_young++;
			} else {
				r.blobs_removed++;
				r.bytes_removed += size;
			}
			continue;
		}
		int d = s->be->blob_delete(s, hex, cutoff, &size);
		if (d == -EAGAIN) {
			r.blobs_kept_young++;
		} else if (d == 0) {
			r.blobs_removed++;
			r.bytes_removed += size;
			casfs__journal_ret(s, "gc-remove", NULL, hex, NULL, 0);
		} else if (d != -ENOENT) {
			rc = d;
			casfs__journal_ret(s, "gc-remove", NULL, hex, NULL, d);
			break;
		}
	}
	if (!o.dry_run)
		s->be->publish_sync(s);
out:
	s->be->unlock(s, token);
	hexvec_free(&lw.digests);
	hexvec_free(&blobs);
	if (res)
		*res = r;
	if (!o.dry_run)
		casfs__journal_ret(s, "gc", NULL, NULL, NULL, rc);
	return rc;
}

/* ------------------------------------------------------------------ fsck */

struct fsck_ctx {
	casfs_store *s;
	const casfs_fsck_opts *o;
	casfs_fsck_result *r;
	struct hexvec names;
};

static void report(struct fsck_ctx *c, enum casfs_fsck_kind kind, const char *name,
		   const char *detail, int repaired)
{
	if (c->o->report)
		c->o->report(kind, name, detail, repaired, c->o->ud);
}

static int collect_name(const char *name, void *ud)
{
	/* Any name at all: hexvec holds up to 64 characters, longer names
	 * are strays and reported by a prefix. */
	return hexvec_add(ud, name);
}

static int fsck_blobs(struct fsck_ctx *c)
{
	casfs_store *s = c->s;
	int rc = s->be->blob_list(s, true, collect_name, &c->names);
	if (rc < 0)
		return rc;
	for (size_t i = 0; i < c->names.n; i++) {
		const char *name = c->names.v[i];
		if (c->o->progress)
			c->o->progress(i + 1, c->names.n, c->o->ud);
		if (casfs_digest_check(s->algo, name) < 0) {
			c->r->stray_files++;
			int fixed = c->o->repair && s->be->blob_quarantine(s, name) == 0;
			c->r->repaired += (unsigned)fixed;
			report(c, CASFS_FSCK_STRAY_FILE, name, "not a digest of this store", fixed);
			continue;
		}
		int fd;
		rc = s->be->blob_open(s, name, &fd);
		if (rc == -ENOENT)
			continue; /* removed meanwhile (gc) */
		char hex[CASFS_HEX_MAX] = "";
		if (rc == 0) {
			rc = casfs__hash_fd(s->algo, fd, hex, NULL);
			close(fd);
		}
		c->r->blobs_checked++;
		if (rc == 0 && strcmp(hex, name) == 0)
			continue;
		char detail[160];
		if (rc < 0)
			snprintf(detail, sizeof(detail), "unreadable: %s", casfs_error_last());
		else
			snprintf(detail, sizeof(detail), "content hashes to %s", hex);
		c->r->bad_blobs++;
		int fixed = 0;
		if (c->o->repair && s->be->blob_quarantine(s, name) == 0) {
			fixed = 1;
			c->r->repaired++;
			casfs__journal_ret(s, "fsck-quarantine", NULL, name, NULL, 0);
		}
		report(c, CASFS_FSCK_BAD_BLOB, name, detail, fixed);
	}
	return 0;
}

static int fsck_label(const char *name, void *ud)
{
	struct fsck_ctx *c = ud;
	casfs_store *s = c->s;
	char hex[CASFS_HEX_MAX];
	c->r->labels_checked++;
	int rc = casfs_label_get(s, name, hex);
	if (rc == -ENOENT)
		return 0;
	enum casfs_fsck_kind kind;
	char detail[200];
	if (rc < 0) {
		kind = CASFS_FSCK_BAD_LABEL;
		snprintf(detail, sizeof(detail), "%s", casfs_error_last());
		c->r->bad_labels++;
	} else {
		int e = s->be->blob_stat(s, hex, NULL, NULL);
		if (e == 0)
			return 0;
		if (e != -ENOENT)
			return e;
		kind = CASFS_FSCK_DANGLING_LABEL;
		snprintf(detail, sizeof(detail), "points at absent blob %s", hex);
		c->r->dangling_labels++;
	}
	int fixed = 0;
	if (c->o->repair) {
		int token;
		if (s->be->lock(s, true, &token) == 0) {
			/* Re-check under the lock: a writer may have fixed it. */
			char again[CASFS_HEX_MAX];
			int now = casfs_label_get(s, name, again);
			bool still = kind == CASFS_FSCK_BAD_LABEL
					     ? (now < 0 && now != -ENOENT)
					     : (now == 0 && strcmp(again, hex) == 0 &&
						s->be->blob_stat(s, hex, NULL, NULL) == -ENOENT);
			if (still && s->be->label_quarantine(s, name) == 0) {
				fixed = 1;
				c->r->repaired++;
				casfs__journal_ret(s, "fsck-quarantine", name,
						   NULL, kind == CASFS_FSCK_DANGLING_LABEL ? hex : NULL, 0);
			}
			s->be->unlock(s, token);
		}
	}
	report(c, kind, name, detail, fixed);
	return 0;
}

int casfs_fsck(casfs_store *s, const casfs_fsck_opts *opts, casfs_fsck_result *res)
{
	casfs_fsck_opts o = { 0 };
	if (opts)
		o = *opts;
	casfs_fsck_result r = { 0 };
	struct fsck_ctx c = { .s = s, .o = &o, .r = &r };
	unsigned debris = 0;
	int rc = s->be->stage_clean(s, &debris);
	r.debris_removed = debris;
	if (debris)
		report(&c, CASFS_FSCK_DEBRIS, "staging", "files of dead writers removed", 1);
	if (rc == 0)
		rc = fsck_blobs(&c);
	if (rc == 0)
		rc = s->be->label_list(s, fsck_label, &c);
	hexvec_free(&c.names);
	if (res)
		*res = r;
	if (rc < 0)
		return rc;
	casfs_error_clear();
	return (r.bad_blobs || r.stray_files || r.bad_labels || r.dangling_labels) ? 1 : 0;
}

/* ----------------------------------------------------------------- stats */

int casfs_store_stats(casfs_store *s, casfs_stats *out)
{
	casfs_stats st = { 0 };
	struct label_walk lw = { .s = s };
	struct hexvec blobs = { 0 };
	int rc = casfs_blob_list(s, collect_blob, &blobs);
	if (rc == 0)
		rc = casfs_label_list(s, collect_label, &lw);
	if (rc < 0)
		goto out;
	for (size_t i = 0; i < blobs.n; i++) {
		uint64_t size;
		if (s->be->blob_stat(s, blobs.v[i], &size, NULL) == 0) {
			st.blobs++;
			st.bytes += size;
		}
	}
	st.labels = lw.labels;
	hexvec_sort(&lw.digests);
	uint64_t distinct = 0;
	for (size_t i = 0; i < lw.digests.n; i++) {
		uint64_t size;
		if (s->be->blob_stat(s, lw.digests.v[i], &size, NULL) < 0)
			continue;
		st.labelled_bytes += size;
		if (i == 0 || strcmp(lw.digests.v[i], lw.digests.v[i - 1]) != 0)
			distinct += size;
	}
	st.bytes_saved = st.labelled_bytes - distinct;
	*out = st;
out:
	hexvec_free(&lw.digests);
	hexvec_free(&blobs);
	return rc;
}
