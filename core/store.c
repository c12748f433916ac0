/*
 * store.c — roots, stores, blobs and streaming writers: the generic layer
 * over a backend (see internal.h).
 *
 * Writing a blob always goes: stage (local file) -> hash as bytes arrive ->
 * make the staged bytes durable -> publish under the digest (atomic, refuses
 * to replace; an existing blob is only freshened) -> make the name durable.
 * So a store only ever shows complete blobs whose names are their digests.
 */
#include "internal.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <uuid/uuid.h>

/* ------------------------------------------------------------------- roots */

int casfs_root_open(casfs_root **out, const char *path, unsigned flags)
{
	return casfs_root_open_opts(out, path, flags, NULL);
}

static void root_free_opts(casfs_root *r)
{
	for (size_t i = 0; i < r->nopts; i++)
		free((char *)r->opts[i].key); /* value points into the same block */
	free(r->opts);
}

static int root_parse_opts(casfs_root *r, const char *const *opts)
{
	size_t n = 0;
	while (opts && opts[n])
		n++;
	if (n == 0)
		return 0;
	if (!(r->opts = calloc(n, sizeof(*r->opts))))
		return casfs__err(-ENOMEM, "out of memory");
	for (size_t i = 0; i < n; i++) {
		char *kv = strdup(opts[i]);
		if (!kv)
			return casfs__err(-ENOMEM, "out of memory");
		char *eq = strchr(kv, '=');
		r->opts[r->nopts++] = (struct casfs_root_opt){ .key = kv, .value = eq ? eq + 1 : "" };
		if (!eq || eq == kv) {
			int rc = casfs__err(-EINVAL, "root option '%s' is not key=value", opts[i]);
			return rc;
		}
		*eq = '\0';
	}
	return 0;
}

const char *casfs__root_opt(casfs_root *r, const char *key)
{
	const char *v = NULL;
	for (size_t i = 0; i < r->nopts; i++) {
		if (strcmp(r->opts[i].key, key) == 0) {
			r->opts[i].used = true;
			v = r->opts[i].value; /* the last one given wins */
		}
	}
	return v;
}

int casfs_root_open_opts(casfs_root **out, const char *path, unsigned flags,
			 const char *const *opts)
{
	*out = NULL;
	if (!path || !*path)
		return casfs__err(-EINVAL, "no root directory given");
	casfs_root *r = calloc(1, sizeof(*r));
	if (!r || !(r->spec = strdup(path))) {
		free(r);
		return casfs__err(-ENOMEM, "out of memory");
	}
	r->flags = flags;
	r->be = strncmp(path, "rados:", 6) == 0 ? &casfs__backend_rados : &casfs__backend_dir;
	int rc = root_parse_opts(r, opts);
	if (rc == 0)
		rc = r->be->root_open(r, path);
	for (size_t i = 0; rc == 0 && i < r->nopts; i++) {
		if (!r->opts[i].used) {
			rc = casfs__err(-EINVAL, "option '%s' does not apply to %s roots", r->opts[i].key,
					r->be->name);
			r->be->root_close(r);
		}
	}
	if (rc < 0) {
		root_free_opts(r);
		free(r->spec);
		free(r);
		return rc;
	}
	*out = r;
	return 0;
}

const char *casfs_root_backend(const casfs_root *root)
{
	return root->be->name;
}

const char *casfs_root_local_dir(const casfs_root *root)
{
	return root->be->root_local_dir ? root->be->root_local_dir(root) : root->spec;
}

void casfs_root_free(casfs_root *root)
{
	if (!root)
		return;
	root->be->root_close(root);
	root_free_opts(root);
	free(root->spec);
	free(root);
}

int casfs_store_create(casfs_root *root, const char *id, casfs_algo algo,
		       char *id_out, size_t id_out_size)
{
	char fresh[37];
	if (!id || !*id) {
		uuid_t u;
		uuid_generate(u);
		uuid_unparse_lower(u, fresh);
		id = fresh;
	}
	int rc = casfs_id_check(id);
	if (rc < 0)
		return rc;
	if (!casfs_algo_name(algo))
		return casfs__err(-EINVAL, "unknown hash algorithm");
	if (id_out && id_out_size <= strlen(id))
		return casfs__err(-ERANGE, "buffer too small for the store id");
	rc = root->be->store_create(root, id, algo);
	if (rc < 0)
		return rc;
	if (id_out)
		strcpy(id_out, id);
	casfs_store *s;
	if (casfs_store_open(&s, root, id) == 0) {
		casfs__journal_ret(s, "new", NULL, NULL, NULL, 0);
		casfs_store_free(s);
	}
	casfs_error_clear();
	return 0;
}

int casfs_store_list(casfs_root *root, casfs_name_fn fn, void *ud)
{
	return root->be->store_list(root, fn, ud);
}

static int stop_at_first(const char *name, void *ud)
{
	(void)name;
	(void)ud;
	return 1;
}

static int stop_at_first_label(const char *name, void *ud)
{
	casfs_store *s = ud;
	char hex[CASFS_HEX_MAX];
	return casfs_label_get(s, name, hex) == -ENOENT ? 0 : 1;
}

int casfs_store_remove(casfs_root *root, const char *id)
{
	casfs_store *s;
	int rc = casfs_store_open(&s, root, id);
	if (rc < 0)
		return rc;
	int token;
	if ((rc = s->be->lock(s, true, &token)) < 0)
		goto out;
	int blobs = s->be->blob_list(s, true, stop_at_first, NULL);
	int labels = blobs ? 0 : s->be->label_list(s, stop_at_first_label, s);
	if (blobs < 0 || labels < 0)
		rc = blobs < 0 ? blobs : labels;
	else if (blobs || labels)
		rc = casfs__err(-ENOTEMPTY, "store '%s' is not empty (it holds %s)", id,
				blobs ? "blobs" : "labels");
	else
		rc = root->be->store_remove(root, id);
	s->be->unlock(s, token);
out:
	casfs_store_free(s);
	return rc;
}

/* ------------------------------------------------------------------ stores */

int casfs_store_open(casfs_store **out, casfs_root *root, const char *id)
{
	*out = NULL;
	int rc = casfs_id_check(id);
	if (rc < 0)
		return rc;
	casfs_store *s = calloc(1, sizeof(*s));
	if (!s)
		return casfs__err(-ENOMEM, "out of memory");
	s->root = root;
	s->be = root->be;
	strcpy(s->id, id);
	rc = s->be->store_open(s);
	if (rc < 0) {
		s->be->store_close(s);
		free(s);
		return rc;
	}
	*out = s;
	return 0;
}

void casfs_store_free(casfs_store *s)
{
	if (!s)
		return;
	s->be->store_close(s);
	free(s);
}

casfs_algo casfs_store_algo(const casfs_store *s)
{
	return s->algo;
}

const char *casfs_store_id(const casfs_store *s)
{
	return s->id;
}

int casfs_store_clean_staging(casfs_store *s, unsigned *removed)
{
	return s->be->stage_clean(s, removed);
}

int casfs_store_session_begin(casfs_store *s, int *session, int64_t *unclean_since)
{
	return s->be->session_begin(s, session, unclean_since);
}

void casfs_store_session_end(casfs_store *s, int session)
{
	s->be->session_end(s, session);
}

void casfs_store_defer_sync(casfs_store *s, int on)
{
	s->defer_sync = on != 0;
}

/* A change published within this long before a sync began may carry an
 * older timestamp (file times come from a coarse clock): such blobs stay
 * suspect. */
#define SYNC_MARK_SLACK_NS 1000000000LL

int casfs_store_sync(casfs_store *s, int session)
{
	int err = __atomic_load_n(&s->sync_err, __ATOMIC_ACQUIRE);
	if (err < 0)
		return casfs__err(err, "store '%s': a sync failed earlier (%s); what was stored since the "
			"last good one is checked after the next start", s->id, strerror(-err));
	uint64_t seen = __atomic_load_n(&s->unsynced, __ATOMIC_ACQUIRE);
	if (seen == __atomic_load_n(&s->synced, __ATOMIC_ACQUIRE) || !s->be->store_sync ||
	    casfs__root_nosync(s))
		return 0;
	int64_t mark = casfs__now_ns() - SYNC_MARK_SLACK_NS;
	int rc = s->be->store_sync(s, session, mark);
	if (rc == 0)
		__atomic_store_n(&s->synced, seen, __ATOMIC_RELEASE);
	else
		__atomic_store_n(&s->sync_err, rc, __ATOMIC_RELEASE);
	return rc;
}

int casfs_blob_quarantine(casfs_store *s, const char *hex)
{
	int rc = casfs_digest_check(s->algo, hex);
	if (rc < 0)
		return rc;
	rc = s->be->blob_quarantine(s, hex);
	return casfs__journal_ret(s, "quarantine", NULL, hex, NULL, rc);
}

/* ------------------------------------------------------------------- blobs */

int casfs_blob_exists(casfs_store *s, const char *hex)
{
	int rc = casfs_digest_check(s->algo, hex);
	if (rc < 0)
		return rc;
	rc = s->be->blob_stat(s, hex, NULL, NULL);
	if (rc == -ENOENT)
		return 0;
	return rc < 0 ? rc : 1;
}

int casfs_blob_size(casfs_store *s, const char *hex, uint64_t *size)
{
	int rc = casfs_digest_check(s->algo, hex);
	if (rc < 0)
		return rc;
	rc = s->be->blob_stat(s, hex, size, NULL);
	if (rc == -ENOENT)
		return casfs__err(-ENOENT, "no blob %s in store '%s'", hex, s->id);
	return rc;
}

int casfs_blob_stat(casfs_store *s, const char *hex, uint64_t *size, int64_t *mtime_ns)
{
	int rc = casfs_digest_check(s->algo, hex);
	if (rc < 0)
		return rc;
	rc = s->be->blob_stat(s, hex, size, mtime_ns);
	if (rc == -ENOENT)
		return casfs__err(-ENOENT, "no blob %s in store '%s'", hex, s->id);
	return rc;
}

int casfs_blob_open(casfs_store *s, const char *hex, int *fd)
{
	int rc = casfs_digest_check(s->algo, hex);
	if (rc < 0)
		return rc;
	return s->be->blob_open(s, hex, fd);
}

int casfs_blob_open_at(casfs_store *s, const char *hex, uint64_t off, int *fd, uint64_t *start,
		       uint64_t *len)
{
	int rc = casfs_digest_check(s->algo, hex);
	if (rc < 0)
		return rc;
	if (s->be->blob_open_at)
		return s->be->blob_open_at(s, hex, off, fd, start, len);
	if ((rc = s->be->blob_open(s, hex, fd)) < 0)
		return rc;
	struct stat sb;
	if (fstat(*fd, &sb) < 0) {
		rc = casfs__errno(-errno, "cannot stat blob %s", hex);
		close(*fd);
		return rc;
	}
	if (off >= (uint64_t)sb.st_size) {
		close(*fd);
		return -ENXIO;
	}
	*start = 0;
	*len = (uint64_t)sb.st_size;
	return 0;
}

int casfs_blob_verify(casfs_store *s, const char *hex, int fd)
{
	int rc = casfs_digest_check(s->algo, hex);
	if (rc < 0)
		return rc;
	char got[CASFS_HEX_MAX];
	if ((rc = casfs__hash_fd(s->algo, fd, got, NULL)) < 0)
		return rc;
	if (strcmp(got, hex) != 0)
		return casfs__err(-EIO, "blob %s is corrupt: its content hashes to %s", hex, got);
	return 0;
}

int casfs_blob_verify_copy(casfs_store *s, const char *hex, int fd, int out)
{
	enum { BUF = 1 << 20 };
	int rc = casfs_digest_check(s->algo, hex);
	if (rc < 0)
		return rc;
	casfs_hash *h = casfs__hash_new(s->algo);
	char *buf = malloc(BUF);
	if (!h || !buf) {
		rc = casfs__err(-ENOMEM, "out of memory");
		goto out;
	}
	for (uint64_t off = 0;;) {
		ssize_t n = pread(fd, buf, BUF, (off_t)off);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			rc = casfs__errno(-errno, "cannot read blob %s", hex);
			goto out;
		}
		if (n == 0)
			break;
		off += (uint64_t)n;
		if ((rc = casfs__hash_update(h, buf, (size_t)n)) < 0)
			goto out;
		if ((rc = casfs__write_all(out, buf, (size_t)n)) < 0) {
			casfs__errno(rc, "cannot write out blob %s", hex);
			goto out;
		}
	}
	char got[CASFS_HEX_MAX];
	if ((rc = casfs__hash_final(h, got)) == 0 && strcmp(got, hex) != 0)
		rc = casfs__err(-EIO, "blob %s is corrupt: its content hashes to %s (run casfs fsck)",
				hex, got);
out:
	free(buf);
	casfs__hash_free(h);
	return rc;
}

struct filter {
	casfs_store *s;
	casfs_name_fn fn;
	void *ud;
	uint64_t total;
};

static int only_digests(const char *name, void *ud)
{
	struct filter *f = ud;
	if (casfs_digest_check(f->s->algo, name) < 0)
		return 0;
	return f->fn(name, f->ud);
}

int casfs_blob_list(casfs_store *s, casfs_name_fn fn, void *ud)
{
	struct filter f = { s, fn, ud, 0 };
	int rc = s->be->blob_list(s, false, only_digests, &f);
	if (rc >= 0)
		casfs_error_clear();
	return rc;
}

static int add_size(const char *name, void *ud)
{
	struct filter *f = ud;
	uint64_t size;
	if (f->s->be->blob_stat(f->s, name, &size, NULL) == 0)
		f->total += size;
	return 0;
}

int casfs_store_total_size(casfs_store *s, uint64_t *bytes)
{
	struct filter f = { s, add_size, NULL, 0 };
	f.ud = &f;
	int rc = casfs_blob_list(s, add_size, &f);
	if (rc < 0)
		return rc;
	*bytes = f.total;
	return 0;
}

/* ----------------------------------------------------------------- writers */

struct casfs_writer {
	casfs_store *s;
	struct casfs_stage st;       /* st.fd < 0: no version being staged */
	casfs_hash *h;
	uint64_t size;               /* staged size */
	uint64_t hashed;             /* bytes [0, hashed) are in h, in order */
	bool rehash;                 /* h is not usable: hash the file at commit */
	/* Writes that arrived ahead of the hashed prefix (a multithreaded
	 * filesystem may deliver sequential writes slightly out of order):
	 * hashed from the staging file's page cache once the gap fills. */
	struct { uint64_t off, len; } ahead[32];
	unsigned nahead;
	uint64_t written_back;       /* writeback started up to here */
	char committed[CASFS_HEX_MAX]; /* last committed digest, "" if none */
	struct hasher *bg;           /* hashing the in-order prefix on a thread */
};

/*
 * A long in-order stream (a file copied in through the mount) is hashed on
 * a thread of its own, reading back what was staged from the page cache,
 * so that hashing overlaps the writes instead of adding to each of them:
 * the writer only posts how far the in-order prefix reaches.  Anything that
 * needs the hash state (the digest, a truncation, a new version) stops the
 * thread first, which finishes what was posted.
 */
#define BG_MIN (4u << 20) /* streams shorter than this are hashed inline */
/* A writer waits once the thread is this far behind, so that the digest at
 * close never waits for more than this much hashing (~8 ms at 2 GB/s): on
 * two CPUs a writer outruns the thread, and close(2) took 160-270 ms after
 * 1 GiB without the bound (bench/README, W1). */
#define BG_LAG (16u << 20)

struct hasher {
	pthread_t th;
	pthread_mutex_t mu;
	pthread_cond_t cv;     /* to the thread: more posted, or stop */
	pthread_cond_t caught; /* to the writer: done moved */
	casfs_hash *h;
	int fd;
	uint64_t ready; /* [0, ready) is staged, in order: to be hashed */
	uint64_t done;  /* [0, done) is in h */
	int err;
	bool stop;
};

static void *stream_hasher_main(void *arg)
{
	struct hasher *b = arg;
	char *buf = malloc(1u << 20);
	pthread_mutex_lock(&b->mu);
	for (;;) {
		while (b->done == b->ready && !b->stop)
			pthread_cond_wait(&b->cv, &b->mu);
		if (b->done == b->ready)
			break; /* stopped, and everything posted is hashed */
		uint64_t from = b->done, to = b->ready;
		pthread_mutex_unlock(&b->mu);
		int err = buf ? 0 : -ENOMEM;
		while (!err && from < to) {
			size_t want = to - from < (1u << 20) ? (size_t)(to - from) : (1u << 20);
			ssize_t r = pread(b->fd, buf, want, (off_t)from);
			if (r <= 0)
				err = r < 0 ? -errno : -EIO;
			else if ((err = casfs__hash_update(b->h, buf, (size_t)r)) == 0)
				from += (uint64_t)r;
			if (!err && from < to) {
				pthread_mutex_lock(&b->mu);
				b->done = from;
				pthread_cond_signal(&b->caught);
				pthread_mutex_unlock(&b->mu);
			}
		}
		pthread_mutex_lock(&b->mu);
		b->done = from;
		if (err) {
			b->err = err;
			b->done = b->ready; /* give up: the digest is read from the file */
		}
		pthread_cond_signal(&b->caught);
	}
	pthread_mutex_unlock(&b->mu);
	free(buf);
	return NULL;
}

/* Posts that [0, w->hashed) is staged in order. */
static void hasher_post(casfs_writer *w)
{
	struct hasher *b = w->bg;
	pthread_mutex_lock(&b->mu);
	b->ready = w->hashed;
	pthread_cond_signal(&b->cv);
	while (b->ready - b->done > BG_LAG)
		pthread_cond_wait(&b->caught, &b->mu);
	pthread_mutex_unlock(&b->mu);
}

/* Starts hashing on a thread from here on; false if it cannot. */
static bool hasher_start(casfs_writer *w)
{
	struct hasher *b = calloc(1, sizeof(*b));
	if (!b)
		return false;
	pthread_mutex_init(&b->mu, NULL);
	pthread_cond_init(&b->cv, NULL);
	pthread_cond_init(&b->caught, NULL);
	b->h = w->h;
	b->fd = w->st.fd;
	b->ready = b->done = w->hashed;
	if (pthread_create(&b->th, NULL, stream_hasher_main, b) != 0) {
		pthread_mutex_destroy(&b->mu);
		pthread_cond_destroy(&b->cv);
		pthread_cond_destroy(&b->caught);
		free(b);
		return false;
	}
	w->bg = b;
	return true;
}

/* Finishes what was posted and ends the thread: w->h is the caller's
 * again (or, after a read error, w->rehash is set). */
static void hasher_stop(casfs_writer *w)
{
	struct hasher *b = w->bg;
	if (!b)
		return;
	pthread_mutex_lock(&b->mu);
	b->stop = true;
	pthread_cond_signal(&b->cv);
	pthread_mutex_unlock(&b->mu);
	pthread_join(b->th, NULL);
	if (b->err)
		w->rehash = true;
	pthread_mutex_destroy(&b->mu);
	pthread_cond_destroy(&b->cv);
	pthread_cond_destroy(&b->caught);
	free(b);
	w->bg = NULL;
}

int casfs_writer_open(casfs_writer **out, casfs_store *s)
{
	*out = NULL;
	casfs_writer *w = calloc(1, sizeof(*w));
	if (!w)
		return casfs__err(-ENOMEM, "out of memory");
	w->s = s;
	w->st.fd = -1;
	w->h = casfs__hash_new(s->algo);
	if (!w->h) {
		free(w);
		return casfs__err(-ENOMEM, "cannot set up hashing");
	}
	int rc = s->be->stage_create(s, &w->st);
	if (rc < 0) {
		casfs__hash_free(w->h);
		free(w);
		return rc;
	}
	*out = w;
	return 0;
}

int casfs_writer_open_from(casfs_writer **out, casfs_store *s, const char *hex)
{
	*out = NULL;
	int rc = casfs_digest_check(s->algo, hex);
	if (rc < 0)
		return rc;
	if ((rc = s->be->blob_stat(s, hex, NULL, NULL)) < 0)
		return rc == -ENOENT ? casfs__err(-ENOENT, "no blob %s in store '%s'", hex, s->id) : rc;
	casfs_writer *w = calloc(1, sizeof(*w));
	if (!w)
		return casfs__err(-ENOMEM, "out of memory");
	w->s = s;
	w->st.fd = -1; /* staged lazily by writer_restage() on the first change */
	w->h = casfs__hash_new(s->algo);
	if (!w->h) {
		free(w);
		return casfs__err(-ENOMEM, "cannot set up hashing");
	}
	strcpy(w->committed, hex);
	*out = w;
	return 0;
}

/* Copies src (from offset 0) into dst; returns bytes copied or -errno. */
static int64_t copy_fd(int src, int dst)
{
	uint64_t done = 0;
	for (;;) {
		ssize_t n = copy_file_range(src, NULL, dst, NULL, 1 << 30, 0);
		if (n > 0) {
			done += (uint64_t)n;
			continue;
		}
		if (n == 0)
			return (int64_t)done;
		if (errno == EINTR)
			continue;
		if (errno != EXDEV && errno != EINVAL && errno != EOPNOTSUPP && errno != ENOSYS)
			return -errno;
		break;
	}
	char buf[1 << 16];
	for (;;) {
		ssize_t n = read(src, buf, sizeof(buf));
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return -errno;
		if (n == 0)
			return (int64_t)done;
		int rc = casfs__write_all(dst, buf, (size_t)n);
		if (rc < 0)
			return rc;
		done += (uint64_t)n;
	}
}

/* After a commit the staged file became the blob: the next change starts a
 * new staged version holding the committed content. */
static int writer_restage(casfs_writer *w)
{
	if (w->st.fd >= 0)
		return 0;
	casfs_store *s = w->s;
	hasher_stop(w);
	int rc = s->be->stage_create(s, &w->st);
	if (rc < 0)
		return rc;
	casfs__hash_reset(w->h);
	w->size = w->hashed = w->written_back = 0;
	w->rehash = false;
	w->nahead = 0;
	if (!w->committed[0])
		return 0;
	int src;
	if ((rc = s->be->blob_open(s, w->committed, &src)) < 0)
		goto fail;
	int64_t n = copy_fd(src, w->st.fd);
	close(src);
	if (n < 0) {
		rc = casfs__errno((int)n, "cannot copy blob %s to staging", w->committed);
		goto fail;
	}
	w->size = (uint64_t)n;
	w->rehash = n > 0;
	return 0;
fail:
	s->be->stage_discard(s, &w->st);
	return rc;
}

/* Hashes the writes held ahead that now continue the hashed prefix. */
static int writer_catch_up(casfs_writer *w)
{
	if (w->bg) {
		/* The thread reads them from the staging file anyway. */
		for (bool progress = true; progress && w->nahead && !w->rehash;) {
			progress = false;
			for (unsigned i = 0; i < w->nahead; i++) {
				if (w->ahead[i].off != w->hashed)
					continue;
				w->hashed += w->ahead[i].len;
				w->ahead[i] = w->ahead[--w->nahead];
				progress = true;
				break;
			}
		}
		hasher_post(w);
		return 0;
	}
	bool progress = true;
	while (progress && w->nahead && !w->rehash) {
		progress = false;
		for (unsigned i = 0; i < w->nahead; i++) {
			if (w->ahead[i].off != w->hashed)
				continue;
			uint64_t len = w->ahead[i].len;
			char buf[65536];
			for (uint64_t done = 0; done < len;) {
				size_t want = len - done < sizeof(buf) ? (size_t)(len - done) : sizeof(buf);
				ssize_t r = pread(w->st.fd, buf, want, (off_t)(w->hashed));
				if (r <= 0) {
					w->rehash = true;
					return 0;
				}
				int rc = casfs__hash_update(w->h, buf, (size_t)r);
				if (rc < 0)
					return rc;
				w->hashed += (uint64_t)r;
				done += (uint64_t)r;
			}
			w->ahead[i] = w->ahead[--w->nahead];
			progress = true;
			break;
		}
	}
	return 0;
}

int casfs_writer_pwrite(casfs_writer *w, const void *buf, size_t n, uint64_t off)
{
	int rc = writer_restage(w);
	if (rc < 0)
		return rc;
	if ((rc = casfs__pwrite_all(w->st.fd, buf, n, off)) < 0)
		return casfs__errno(rc, "cannot write to staging file");
	if (n == 0)
		return 0;
	if (w->rehash) {
		/* hash at commit */
	} else if (off == w->hashed) {
		if (!w->bg && w->hashed + n >= BG_MIN)
			hasher_start(w); /* a long stream: hash it alongside */
		if (!w->bg && (rc = casfs__hash_update(w->h, buf, n)) < 0)
			return rc;
		w->hashed += n;
		if ((rc = writer_catch_up(w)) < 0)
			return rc;
	} else if (off > w->hashed && w->nahead < sizeof(w->ahead) / sizeof(w->ahead[0])) {
		for (unsigned i = 0; i < w->nahead; i++)
			if (off < w->ahead[i].off + w->ahead[i].len && w->ahead[i].off < off + n)
				w->rehash = true; /* overlapping rewrites: hash at commit */
		w->ahead[w->nahead].off = off;
		w->ahead[w->nahead].len = n;
		w->nahead++;
	} else {
		w->rehash = true; /* a rewrite of hashed bytes, or too scattered */
	}
	if (off + n > w->size)
		w->size = off + n;
	/* Start writeback of what streamed in, so that the sync at commit
	 * (close(2) through the filesystem) finds little left to do. */
	if (!casfs__root_nosync(w->s) && w->size >= w->written_back + (8u << 20)) {
		sync_file_range(w->st.fd, (off_t)w->written_back, (off_t)(w->size - w->written_back),
				SYNC_FILE_RANGE_WRITE);
		w->written_back = w->size;
	}
	return 0;
}

int casfs_writer_write(casfs_writer *w, const void *buf, size_t n)
{
	int rc = writer_restage(w);
	if (rc < 0)
		return rc;
	return casfs_writer_pwrite(w, buf, n, w->size);
}

int casfs_writer_truncate(casfs_writer *w, uint64_t size)
{
	int rc = writer_restage(w);
	if (rc < 0)
		return rc;
	if (size == w->size)
		return 0;
	hasher_stop(w);
	if (ftruncate(w->st.fd, (off_t)size) < 0)
		return casfs__errno(-errno, "cannot truncate staging file");
	if (size == 0) {
		casfs__hash_reset(w->h);
		w->hashed = 0;
		w->rehash = false;
		w->nahead = 0;
	} else {
		w->rehash = true;
	}
	w->size = size;
	return 0;
}

uint64_t casfs_writer_size(const casfs_writer *w)
{
	return w->size;
}

int casfs_writer_fd(const casfs_writer *w)
{
	return w->st.fd;
}

/* True when the running hash covers exactly the staged bytes, in order. */
static bool hash_is_current(const casfs_writer *w)
{
	return !w->rehash && w->hashed == w->size && !w->nahead;
}

/* The digest of the staged version: from the running hash, or by reading
 * the staging file when writes came out of order. */
static int writer_digest(casfs_writer *w, char hex[CASFS_HEX_MAX])
{
	hasher_stop(w);
	if (hash_is_current(w)) {
		/* Finishing the running hash consumes it: if this commit
		 * fails and is tried again, read the staging file then. */
		w->rehash = true;
		return casfs__hash_final(w->h, hex);
	}
	return casfs__hash_fd(w->s->algo, w->st.fd, hex, NULL);
}

int casfs__writer_prepare(casfs_writer *w, char hex[CASFS_HEX_MAX])
{
	if (w->st.fd < 0) {
		if (!w->committed[0])
			return casfs__err(-EINVAL, "writer has nothing to commit");
		strcpy(hex, w->committed);
		return 1;
	}
	int rc = writer_digest(w, hex);
	if (rc < 0)
		return rc;
	/* A store that defers its syncs makes nothing durable here: whether
	 * the content is stored already, publishing finds out. */
	if (w->s->defer_sync)
		return 0;
	/* Content already stored: publishing will only freshen the blob and
	 * drop this copy, so there is nothing to make durable. */
	rc = w->s->be->blob_stat(w->s, hex, NULL, NULL);
	if (rc == 0)
		return 0;
	if (rc != -ENOENT)
		return rc; /* cannot tell (a remote store that does not answer) */
	struct casfs_stage *one = &w->st;
	return w->s->be->stage_sync(w->s, &one, 1);
}

int casfs__writer_publish(casfs_writer *w, const char *hex)
{
	casfs_store *s = w->s;
	int rc = s->be->blob_publish(s, &w->st, hex);
	w->st.fd = -1; /* consumed, whatever the outcome */
	if (rc < 0)
		return rc;
	strcpy(w->committed, hex);
	return rc;
}

static int writer_commit_nolog(casfs_writer *w, char hex[CASFS_HEX_MAX])
{
	int rc = casfs__writer_prepare(w, hex);
	if (rc != 0)
		return rc;
	rc = casfs__writer_publish(w, hex);
	if (rc < 0)
		return rc;
	int sr = w->s->be->publish_sync(w->s);
	return sr < 0 ? sr : rc;
}

int casfs_writer_commit(casfs_writer *w, char hex_out[CASFS_HEX_MAX])
{
	char hex[CASFS_HEX_MAX] = "";
	int rc = writer_commit_nolog(w, hex);
	casfs__journal_ret(w->s, "store", NULL, hex[0] ? hex : NULL, NULL, rc < 0 ? rc : 0);
	if (rc >= 0)
		strcpy(hex_out, hex);
	return rc;
}

int casfs_writer_commit_many(casfs_writer **ws, size_t n, char (*hex_out)[CASFS_HEX_MAX],
			     int *ret_out)
{
	if (n == 0)
		return 0;
	casfs_store *s = ws[0]->s;
	struct casfs_stage **stages = calloc(n, sizeof(*stages));
	if (!stages)
		return casfs__err(-ENOMEM, "out of memory");
	size_t k = 0;
	int first = 0;
	/* 1. finish every digest, 2. one sync for all, 3. publish each,
	 * 4. one sync of the names. */
	for (size_t i = 0; i < n; i++) {
		casfs_writer *w = ws[i];
		hex_out[i][0] = '\0';
		if (w->st.fd < 0) {
			ret_out[i] = casfs__writer_prepare(w, hex_out[i]);
			continue;
		}
		int rc = writer_digest(w, hex_out[i]);
		ret_out[i] = rc;
		if (rc == 0 && s->be->blob_stat(s, hex_out[i], NULL, NULL) != 0)
			stages[k++] = &w->st; /* new content: to be made durable */
	}
	int rc = s->be->stage_sync(s, stages, k);
	for (size_t i = 0; i < n; i++) {
		casfs_writer *w = ws[i];
		if (ret_out[i] < 0 || w->st.fd < 0)
			continue;
		ret_out[i] = rc < 0 ? rc : casfs__writer_publish(w, hex_out[i]);
	}
	int sr = s->be->publish_sync(s);
	for (size_t i = 0; i < n; i++) {
		if (ret_out[i] >= 0 && sr < 0)
			ret_out[i] = sr;
		casfs__journal_ret(s, "store", NULL, hex_out[i][0] ? hex_out[i] : NULL, NULL,
				   ret_out[i] < 0 ? ret_out[i] : 0);
		if (ret_out[i] < 0 && first == 0)
			first = ret_out[i];
	}
	free(stages);
	return first;
}

void casfs_writer_free(casfs_writer *w)
{
	if (!w)
		return;
	hasher_stop(w);
	w->s->be->stage_discard(w->s, &w->st);
	casfs__hash_free(w->h);
	free(w);
}

/* ------------------------------------------------- pipelined fd ingestion */

enum { CHUNK = 1 << 20, SLOTS = 4, WRITEBACK_EVERY = 8 << 20 };

struct pipe_state {
	pthread_mutex_t mu;
	pthread_cond_t cv;     /* to the thread: more posted, or stop */
	pthread_cond_t caught; /* to the writer: done moved */
	casfs_hash *h;
	char *buf[SLOTS];
	size_t len[SLOTS];
	uint64_t posted, hashed; /* slot counters */
	bool eof;
	int err;
};

static void *hasher_main(void *arg)
{
	struct pipe_state *p = arg;
	pthread_mutex_lock(&p->mu);
	for (;;) {
		while (p->hashed == p->posted && !p->eof && !p->err)
			pthread_cond_wait(&p->cv, &p->mu);
		if (p->err || (p->hashed == p->posted && p->eof))
			break;
		unsigned slot = (unsigned)(p->hashed % SLOTS);
		pthread_mutex_unlock(&p->mu);
		int rc = casfs__hash_update(p->h, p->buf[slot], p->len[slot]);
		pthread_mutex_lock(&p->mu);
		if (rc < 0)
			p->err = rc;
		p->hashed++;
		pthread_cond_broadcast(&p->cv);
	}
	pthread_mutex_unlock(&p->mu);
	return NULL;
}

/* Reads until buf is full or end of input; returns bytes or -errno. */
static ssize_t read_full(int fd, char *buf, size_t n)
{
	size_t got = 0;
	while (got < n) {
		ssize_t r = read(fd, buf + got, n - got);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			return -errno;
		if (r == 0)
			break;
		got += (size_t)r;
	}
	return (ssize_t)got;
}

/* ------------------------------------- large regular files: kernel copy */

struct reader_state {
	int fd;
	off_t start;
	casfs_hash *h;
	uint64_t hashed;
	volatile bool stop;
	int err;
};

/* Hashes the source file by itself while the main thread has the kernel
 * copy it: the time is then max(copy, hash), not their sum. */
static void *source_hasher_main(void *arg)
{
	struct reader_state *r = arg;
	char *buf = malloc(CHUNK);
	if (!buf) {
		r->err = -ENOMEM;
		return NULL;
	}
	for (off_t off = r->start; !r->stop;) {
		ssize_t n = pread(r->fd, buf, CHUNK, off);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			r->err = -errno;
			break;
		}
		if (n == 0)
			break;
		if ((r->err = casfs__hash_update(r->h, buf, (size_t)n)) < 0)
			break;
		r->hashed += (uint64_t)n;
		off += n;
	}
	free(buf);
	return NULL;
}

static bool same_file_state(const struct stat *a, const struct stat *b)
{
	return a->st_size == b->st_size && a->st_mtim.tv_sec == b->st_mtim.tv_sec &&
	       a->st_mtim.tv_nsec == b->st_mtim.tv_nsec && a->st_ctim.tv_sec == b->st_ctim.tv_sec &&
	       a->st_ctim.tv_nsec == b->st_ctim.tv_nsec && a->st_ino == b->st_ino;
}

/* Stages a regular file with copy_file_range while a thread hashes it.
 * 1 if the kernel cannot copy here (then nothing was done). */
static int write_fd_kernel_copy(casfs_writer *w, int fd, const struct stat *before,
				void (*progress)(uint64_t, void *), void *ud)
{
	off_t start = lseek(fd, 0, SEEK_CUR);
	if (start < 0)
		return 1;
	struct reader_state r = { .fd = fd, .start = start, .h = w->h };
	pthread_t th;
	if (pthread_create(&th, NULL, source_hasher_main, &r) != 0)
		return 1;
	loff_t in = start, out = 0;
	uint64_t synced = 0;
	bool dosync = !casfs__root_nosync(w->s);
	int rc = 0;
	for (;;) {
		ssize_t n = copy_file_range(fd, &in, w->st.fd, &out, 8 << 20, 0);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			rc = out == 0 && (errno == EXDEV || errno == EINVAL || errno == EOPNOTSUPP ||
					  errno == ENOSYS || errno == EBADF)
				     ? 1
				     : casfs__errno(-errno, "cannot copy into staging file");
			break;
		}
		if (n == 0)
			break;
		if (dosync && (uint64_t)out - synced >= WRITEBACK_EVERY) {
			sync_file_range(w->st.fd, (off_t)synced, (off_t)((uint64_t)out - synced),
					SYNC_FILE_RANGE_WRITE);
			synced = (uint64_t)out;
		}
		if (progress)
			progress((uint64_t)out, ud);
	}
	if (rc != 0)
		r.stop = true;
	pthread_join(th, NULL);
	if (rc == 1) {
		casfs__hash_reset(w->h); /* back to the empty writer we had */
		return 1;
	}
	w->size = (uint64_t)out;
	lseek(fd, in, SEEK_SET);
	if (rc < 0)
		return rc;
	/* A source changed while we read it twice would make the running
	 * hash disagree with the copy: then hash the copy at commit. */
	struct stat after;
	if (r.err < 0 || r.hashed != (uint64_t)out || fstat(fd, &after) < 0 || !same_file_state(before, &after))
		w->rehash = true;
	else
		w->hashed = (uint64_t)out;
	return 0;
}

int casfs_writer_write_fd(casfs_writer *w, int fd, void (*progress)(uint64_t, void *), void *ud)
{
	struct pipe_state p = { .h = w->h };
	int rc = writer_restage(w);
	if (rc < 0)
		return rc;
	hasher_stop(w); /* its own pipeline hashes from here */
	struct stat sb;
	bool regular = fstat(fd, &sb) == 0 && S_ISREG(sb.st_mode);
	if (regular && sb.st_size >= (off_t)WRITEBACK_EVERY && w->size == 0 && w->hashed == 0 &&
	    !w->rehash && !w->nahead) {
		rc = write_fd_kernel_copy(w, fd, &sb, progress, ud);
		if (rc <= 0)
			return rc;
		/* else: the kernel cannot copy between these files */
	}
	if (regular && sb.st_size < 65536) {
		/* Small files: no thread, no big buffers. */
		char buf[65536];
		ssize_t n;
		while ((n = read_full(fd, buf, sizeof(buf))) > 0)
			if ((rc = casfs_writer_write(w, buf, (size_t)n)) < 0)
				return rc;
		if (n < 0)
			return casfs__errno((int)n, "read");
		if (progress)
			progress(w->size, ud);
		return 0;
	}
	if (!hash_is_current(w)) {
		/* Not a clean sequential stream: plain writes, hash at commit. */
		char *buf = malloc(CHUNK);
		if (!buf)
			return casfs__err(-ENOMEM, "out of memory");
		ssize_t n;
		while ((n = read_full(fd, buf, CHUNK)) > 0)
			if ((rc = casfs_writer_write(w, buf, (size_t)n)) < 0)
				break;
		free(buf);
		if (n < 0)
			return casfs__errno((int)n, "read");
		return rc;
	}
	for (int i = 0; i < SLOTS; i++) {
		p.buf[i] = malloc(CHUNK);
		if (!p.buf[i]) {
			rc = casfs__err(-ENOMEM, "out of memory");
			goto out_free;
		}
	}
	/* A first chunk that holds the whole input is hashed inline: no
	 * thread for small files. */
	ssize_t n = read_full(fd, p.buf[0], CHUNK);
	if (n < 0) {
		rc = casfs__errno((int)n, "read");
		goto out_free;
	}
	if ((size_t)n < CHUNK) {
		rc = casfs_writer_write(w, p.buf[0], (size_t)n);
		if (rc == 0 && progress)
			progress(w->size, ud);
		goto out_free;
	}
	pthread_mutex_init(&p.mu, NULL);
	pthread_cond_init(&p.cv, NULL);
	pthread_t th;
	if ((rc = -pthread_create(&th, NULL, hasher_main, &p)) < 0) {
		casfs__errno(rc, "cannot start hashing thread");
		goto out_sync;
	}
	uint64_t off = w->size, synced = off;
	bool dosync = !casfs__root_nosync(w->s);
	for (uint64_t i = 0;; i++) {
		unsigned slot = (unsigned)(i % SLOTS);
		if (i > 0) {
			pthread_mutex_lock(&p.mu);
			while (p.posted - p.hashed >= SLOTS && !p.err)
				pthread_cond_wait(&p.cv, &p.mu);
			rc = p.err;
			pthread_mutex_unlock(&p.mu);
			if (rc < 0)
				break;
			n = read_full(fd, p.buf[slot], CHUNK);
			if (n < 0) {
				rc = casfs__errno((int)n, "read");
				break;
			}
			if (n == 0)
				break;
		}
		/* Post first: the hasher reads the slot while we write it. */
		pthread_mutex_lock(&p.mu);
		p.len[slot] = (size_t)n;
		p.posted++;
		pthread_cond_broadcast(&p.cv);
		pthread_mutex_unlock(&p.mu);
		if ((rc = casfs__pwrite_all(w->st.fd, p.buf[slot], (size_t)n, off)) < 0) {
			casfs__errno(rc, "cannot write to staging file");
			break;
		}
		off += (uint64_t)n;
		if (dosync && off - synced >= WRITEBACK_EVERY) {
			/* Start writeback early so the final sync is short. */
			sync_file_range(w->st.fd, (off_t)synced, (off_t)(off - synced),
					SYNC_FILE_RANGE_WRITE);
			synced = off;
		}
		if (progress)
			progress(off, ud);
		if ((size_t)n < CHUNK)
			break;
	}
	pthread_mutex_lock(&p.mu);
	p.eof = true;
	if (rc < 0 && !p.err)
		p.err = rc;
	pthread_cond_broadcast(&p.cv);
	pthread_mutex_unlock(&p.mu);
	pthread_join(th, NULL);
	if (rc == 0 && p.err < 0)
		rc = p.err;
	if (rc == 0) {
		w->size = w->hashed = off;
	} else {
		/* The hash state is now unusable. */
		w->rehash = true;
		w->size = off;
	}
out_sync:
	pthread_cond_destroy(&p.cv);
	pthread_mutex_destroy(&p.mu);
out_free:
	for (int i = 0; i < SLOTS; i++)
		free(p.buf[i]);
	return rc;
}

int casfs_blob_put_fd(casfs_store *s, int fd, char hex_out[CASFS_HEX_MAX],
		      void (*progress)(uint64_t, void *), void *ud)
{
	casfs_writer *w;
	int rc = casfs_writer_open(&w, s);
	if (rc < 0)
		return casfs__journal_ret(s, "store", NULL, NULL, NULL, rc);
	rc = casfs_writer_write_fd(w, fd, progress, ud);
	if (rc < 0)
		casfs__journal_ret(s, "store", NULL, NULL, NULL, rc);
	else
		rc = casfs_writer_commit(w, hex_out);
	casfs_writer_free(w);
	return rc;
}

int casfs_blob_put(casfs_store *s, const void *buf, size_t len, char hex_out[CASFS_HEX_MAX])
{
	casfs_writer *w;
	int rc = casfs_writer_open(&w, s);
	if (rc < 0)
		return casfs__journal_ret(s, "store", NULL, NULL, NULL, rc);
	rc = casfs_writer_write(w, buf, len);
	if (rc < 0)
		casfs__journal_ret(s, "store", NULL, NULL, NULL, rc);
	else
		rc = casfs_writer_commit(w, hex_out);
	casfs_writer_free(w);
	return rc;
}
