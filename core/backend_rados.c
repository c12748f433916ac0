/*
 * backend_rados.c — stores in a Ceph RADOS pool (librados), shared by many
 * machines.
 *
 * A root "rados:POOL[/NS]" is a pool and a namespace NS ("" if not given).
 * In NS one object, casfs.root, lists the stores in its omap (id -> algo).
 * Each store has its own namespace "NS/ID" holding:
 *
 *   b.<hex>                 a blob's head: its first CHUNK bytes, and
 *                           xattrs casfs.size, casfs.fresh (20-digit ns
 *                           time of the last store of that content) and
 *                           casfs.tail (nonce of its other chunks, "" if
 *                           none).  Created exclusively, and last: a head
 *                           exists only for a complete blob.
 *   t.<hex>.<nonce>.<i>     chunk i >= 1 of that blob.  The nonce is fresh
 *                           per upload, so an upload never writes an
 *                           object a concurrent gc is deleting.
 *   casfs.labels            omap: label name -> "hex mode mtime ctime uid
 *                           gid"; a directory of labels made by mkdir is
 *                           "name/" -> "d mode mtime ctime uid gid".
 *                           Directories also exist implicitly while they
 *                           hold labels.  Every change is one guarded
 *                           compound operation (omap compare + set/remove),
 *                           so set, replace, remove, compare-and-swap and
 *                           rename are atomic across machines.  The gc
 *                           lock (a RADOS lock on this object: labellers
 *                           shared, gc exclusive) keeps gc from removing a
 *                           blob a label is being pointed at.
 *   casfs.journal.<seg>     the journal, appended line by line (atomic
 *                           appends); a new segment every JOURNAL_SEG bytes.
 *   q.<name>.<rand>         blobs moved aside by fsck --repair.
 *
 * Writers stage on local disk (O_TMPFILE under the cache directory) and
 * upload at publish.  Reads go through a bounded local cache of whole chunks
 * (<cache_dir>/<pool>/<ns>/<store>/<hex>.<i>), which is always correct:
 * blobs never change.
 */
#include "internal.h"

#include <dirent.h>
#include <dlfcn.h>
#include <fcntl.h>
#include <limits.h>
#include <rados/librados.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/fsuid.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* librados is loaded on the first rados: root, not linked: loading it (and
 * the Ceph libraries it pulls in) costs ~0.1 s at every start of every
 * program, and far more at exit under LeakSanitizer, for users who never
 * use a rados: root.  Every librados call goes through rl. */
#define RADOS_CALLS(X) \
	X(rados_aio_create_completion2) \
	X(rados_aio_get_return_value) \
	X(rados_aio_read) \
	X(rados_aio_release) \
	X(rados_aio_wait_for_complete) \
	X(rados_aio_write_full) \
	X(rados_conf_read_file) \
	X(rados_conf_set) \
	X(rados_connect) \
	X(rados_create) \
	X(rados_create_read_op) \
	X(rados_create_write_op) \
	X(rados_getxattr) \
	X(rados_getxattrs_end) \
	X(rados_getxattrs_next) \
	X(rados_ioctx_create) \
	X(rados_ioctx_destroy) \
	X(rados_ioctx_set_namespace) \
	X(rados_lock_exclusive) \
	X(rados_lock_shared) \
	X(rados_nobjects_list_close) \
	X(rados_nobjects_list_next) \
	X(rados_nobjects_list_open) \
	X(rados_omap_get_end) \
	X(rados_omap_get_next2) \
	X(rados_read) \
	X(rados_read_op_getxattrs) \
	X(rados_read_op_omap_get_vals2) \
	X(rados_read_op_omap_get_vals_by_keys2) \
	X(rados_read_op_operate) \
	X(rados_release_read_op) \
	X(rados_release_write_op) \
	X(rados_remove) \
	X(rados_shutdown) \
	X(rados_stat) \
	X(rados_unlock) \
	X(rados_write_op_append) \
	X(rados_write_op_assert_exists) \
	X(rados_write_op_cmpxattr) \
	X(rados_write_op_create) \
	X(rados_write_op_exec) \
	X(rados_write_op_omap_cmp2) \
	X(rados_write_op_omap_rm_keys2) \
	X(rados_write_op_omap_set2) \
	X(rados_write_op_operate) \
	X(rados_write_op_remove) \
	X(rados_write_op_setxattr) \
	X(rados_write_op_write_full)

static struct {
#define X(f) __typeof__(f) *f;
	RADOS_CALLS(X)
#undef X
} rl;
static pthread_once_t rl_once = PTHREAD_ONCE_INIT;
static char rl_error[256];

static void rl_load(void)
{
	void *h = dlopen("librados.so.2", RTLD_NOW | RTLD_LOCAL);
	if (!h) {
		snprintf(rl_error, sizeof(rl_error), "%s", dlerror());
		return;
	}
#define X(f) \
	if (!rl_error[0] && !(*(void **)&rl.f = dlsym(h, #f))) \
		snprintf(rl_error, sizeof(rl_error), "librados.so.2 has no %s", #f);
	RADOS_CALLS(X)
#undef X
	if (rl_error[0])
		dlclose(h); /* rl is never used: every rados: root fails to open */
}

static int rl_ready(void)
{
	pthread_once(&rl_once, rl_load);
	if (rl_error[0])
		return casfs__err(-ENOTSUP, "rados: roots need Ceph's client library (Debian package "
			"librados2): %s", rl_error);
	return 0;
}

#define CHUNK (4u << 20)         /* bytes per RADOS object of a blob */
#define INFLIGHT 4               /* chunk transfers in flight per blob */
#define JOURNAL_SEG (8u << 20)   /* bytes per journal segment */
#define LOCK_OBJ "casfs.labels"
#define LOCK_NAME "casfs-gc"
#define LOCK_SECONDS 60          /* gc's lock: renewed while it runs */
#define SHARED_SECONDS 10        /* a label change's: a crashed holder delays gc this long */
#define PAGE_KEYS 1000           /* omap keys fetched per round trip */
#define CACHE_SIZE_DEFAULT (1ull << 30)
#define TIMEOUT_DEFAULT 30
#define NS_MAX 128               /* bytes of a root's namespace */

struct rroot {
	rados_t cl;
	rados_ioctx_t io;        /* in the root namespace */
	char *pool, *ns;
	char *cache_dir;         /* <cache_dir option>/<pool>/<ns or "-"> */
	char *staging_dir;
	uint64_t cache_size;
	int timeout;
	pthread_mutex_t cmu;     /* cache accounting */
	uint64_t cache_used;
	bool cache_counted;
};

struct rstore {
	rados_ioctx_t io;        /* in the store's namespace */
	char *cache;             /* its chunk cache directory */
	pthread_mutex_t mu;
	unsigned jseg;
	unsigned appends;
	int64_t lease_until;     /* while we hold the gc lock: until when */
	size_t lease_slot;       /* and with which cookie */
	/* cookies of the locks held, indexed by token */
	char (*cookies)[40];
	bool *busy;
	size_t ncookies;
};

static struct rroot *R(casfs_root *r) { return r->b; }
static struct rstore *S(casfs_store *s) { return s->b; }

/* ------------------------------------------------------------- helpers */

static int rerr(int rc, const char *what, const char *name)
{
	if (rc == -ETIMEDOUT)
		return casfs__err(-ETIMEDOUT, "%s '%s': the Ceph cluster did not answer in time", what, name);
	return casfs__errno(rc, "%s '%s'", what, name);
}

static void fresh_now(char out[24])
{
	snprintf(out, 24, "%020lld", (long long)casfs__now_ns());
}

static int mkdirs(const char *path, mode_t mode)
{
	char tmp[PATH_MAX];
	if (snprintf(tmp, sizeof(tmp), "%s", path) >= (int)sizeof(tmp))
		return -ENAMETOOLONG;
	for (char *p = tmp + 1; *p; p++) {
		if (*p != '/')
			continue;
		*p = '\0';
		if (mkdir(tmp, mode) < 0 && errno != EEXIST)
			return -errno;
		*p = '/';
	}
	if (mkdir(tmp, mode) < 0 && errno != EEXIST)
		return -errno;
	return 0;
}

/* The cache and staging files are the process's own, whatever filesystem
 * identity the calling thread took (the mount acts as its caller, who may
 * not enter the daemon's cache directory). */
struct ident {
	uid_t uid;
	gid_t gid;
};

static struct ident as_process(void)
{
	struct ident old;
	old.uid = (uid_t)setfsuid(geteuid());
	old.gid = (gid_t)setfsgid(getegid());
	return old;
}

static void as_before(struct ident old)
{
	setfsgid(old.gid);
	setfsuid(old.uid);
}

/* Escapes a pool or namespace name for use as one path component. */
static char *path_component(const char *s)
{
	size_t n = strlen(s);
	char *out = malloc(3 * n + 2);
	if (!out)
		return NULL;
	char *o = out;
	if (!n)
		*o++ = '-';
	for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
		if (*p == '/' || *p == '%' || (*p == '.' && p == (const unsigned char *)s))
			o += sprintf(o, "%%%02x", *p);
		else
			*o++ = (char)*p;
	}
	*o = '\0';
	return out;
}

static int parse_size(const char *v, uint64_t *out)
{
	char *end;
	errno = 0;
	unsigned long long n = strtoull(v, &end, 10);
	if (errno || end == v)
		return -EINVAL;
	unsigned shift = 0;
	switch (*end) {
	case 'k': case 'K': shift = 10; end++; break;
	case 'm': case 'M': shift = 20; end++; break;
	case 'g': case 'G': shift = 30; end++; break;
	case 't': case 'T': shift = 40; end++; break;
	}
	if (*end == 'i' || *end == 'B')
		end += *end == 'i' && end[1] == 'B' ? 2 : 1;
	if (*end || (shift && n > (UINT64_MAX >> shift)))
		return -EINVAL;
	*out = (uint64_t)n << shift;
	return 0;
}

/* Reads the values of keys from obj's omap: vals[i] (malloc'ed, NULL if
 * absent). */
static int omap_get(rados_ioctx_t io, const char *obj, const char *const *keys, size_t n,
		    char **vals, size_t *lens)
{
	for (size_t i = 0; i < n; i++)
		vals[i] = NULL;
	size_t klens[8];
	if (n > 8)
		return -EINVAL;
	for (size_t i = 0; i < n; i++)
		klens[i] = strlen(keys[i]);
	rados_read_op_t op = rl.rados_create_read_op();
	rados_omap_iter_t it;
	int prval = 0;
	rl.rados_read_op_omap_get_vals_by_keys2(op, keys, n, klens, &it, &prval);
	int rc = rl.rados_read_op_operate(op, io, obj, 0);
	if (rc == 0 && prval < 0)
		rc = prval;
	if (rc == 0) {
		char *k, *v;
		size_t kl, vl;
		while (rl.rados_omap_get_next2(it, &k, &v, &kl, &vl) == 0 && k) {
			for (size_t i = 0; i < n; i++) {
				if (kl == klens[i] && memcmp(k, keys[i], kl) == 0 && !vals[i]) {
					vals[i] = malloc(vl + 1);
					if (vals[i]) {
						memcpy(vals[i], v, vl);
						vals[i][vl] = '\0';
						if (lens)
							lens[i] = vl;
					}
				}
			}
		}
	}
	rl.rados_omap_get_end(it);
	rl.rados_release_read_op(op);
	return rc;
}

/* Calls fn(key, val, ud) for obj's omap keys with prefix, in order, from
 * after start_after ("" = the beginning).  fn may return 1 to stop, or 2
 * after writing a new start_after into *skip (to jump over a subtree). */
typedef int (*omap_fn)(const char *key, size_t klen, const char *val, size_t vlen, void *ud,
		       char **skip);
static int omap_walk(rados_ioctx_t io, const char *obj, const char *prefix, omap_fn fn, void *ud)
{
	char *after = strdup("");
	if (!after)
		return -ENOMEM;
	int rc = 0;
	for (;;) {
		rados_read_op_t op = rl.rados_create_read_op();
		rados_omap_iter_t it;
		unsigned char more = 0;
		int prval = 0;
		rl.rados_read_op_omap_get_vals2(op, after, prefix, PAGE_KEYS, &it, &more, &prval);
		rc = rl.rados_read_op_operate(op, io, obj, 0);
		if (rc == 0 && prval < 0)
			rc = prval;
		if (rc < 0) {
			rl.rados_omap_get_end(it); /* made with the operation */
			rl.rados_release_read_op(op);
			break;
		}
		char *k, *v, *skip = NULL;
		size_t kl, vl;
		bool stop = false, jumped = false;
		char *last = NULL;
		while (!stop && rl.rados_omap_get_next2(it, &k, &v, &kl, &vl) == 0 && k) {
			char *key = strndup(k, kl);
			if (!key) {
				rc = -ENOMEM;
				stop = true;
				break;
			}
			int r = fn(key, kl, v, vl, ud, &skip);
			free(last);
			last = key;
			if (r == 2) {
				jumped = true;
				break;
			}
			if (r != 0) {
				rc = r == 1 ? 0 : r;
				stop = true;
			}
		}
		rl.rados_omap_get_end(it);
		rl.rados_release_read_op(op);
		if (stop) {
			free(last);
			free(skip);
			break;
		}
		if (jumped) {
			free(last);
			free(after);
			after = skip;
			continue;
		}
		if (!more || !last) {
			free(last);
			break;
		}
		free(after);
		after = last;
	}
	free(after);
	return rc;
}

/* ---------------------------------------------------------------- roots */

static int rados_root_open(casfs_root *r, const char *spec)
{
	const char *pool = spec + 6;
	const char *slash = strchr(pool, '/');
	size_t plen = slash ? (size_t)(slash - pool) : strlen(pool);
	const char *ns = slash ? slash + 1 : "";
	if (plen == 0)
		return casfs__err(-EINVAL, "'%s': no pool name (expected rados:POOL or rados:POOL/NAMESPACE)", spec);
	if (strchr(ns, '/'))
		return casfs__err(-EINVAL, "'%s': a namespace cannot contain '/'", spec);
	if (strlen(ns) > NS_MAX)
		return casfs__err(-ENAMETOOLONG, "'%s': a namespace is at most %d bytes", spec, NS_MAX);
	int lrc = rl_ready();
	if (lrc < 0)
		return lrc;
	struct rroot *rr = calloc(1, sizeof(*rr));
	if (!rr)
		return casfs__err(-ENOMEM, "out of memory");
	pthread_mutex_init(&rr->cmu, NULL);
	r->b = rr;
	rr->pool = strndup(pool, plen);
	rr->ns = strdup(ns);
	int rc = 0;
	if (!rr->pool || !rr->ns) {
		rc = casfs__err(-ENOMEM, "out of memory");
		goto fail;
	}

	const char *conf = casfs__root_opt(r, "ceph_conf");
	const char *id = casfs__root_opt(r, "ceph_id");
	const char *tmo = casfs__root_opt(r, "ceph_timeout");
	const char *cdir = casfs__root_opt(r, "cache_dir");
	const char *csize = casfs__root_opt(r, "cache_size");
	if (!id || !*id)
		id = getenv("CEPH_ID");
	if (!id || !*id)
		id = "admin";
	if (!strncmp(id, "client.", 7))
		id += 7;
	rr->timeout = TIMEOUT_DEFAULT;
	if (tmo) {
		char *end;
		long t = strtol(tmo, &end, 10);
		if (*end || end == tmo || t < 1 || t > 86400) {
			rc = casfs__err(-EINVAL, "ceph_timeout=%s: expected whole seconds, 1 to 86400", tmo);
			goto fail;
		}
		rr->timeout = (int)t;
	}
	rr->cache_size = CACHE_SIZE_DEFAULT;
	if (csize && (parse_size(csize, &rr->cache_size) < 0 || rr->cache_size < 2 * (uint64_t)CHUNK)) {
		rc = casfs__err(-EINVAL, "cache_size=%s: expected a size of at least 8M (K, M, G suffixes)", csize);
		goto fail;
	}

	/* The cache and staging directories. */
	char base[PATH_MAX];
	if (cdir && *cdir)
		snprintf(base, sizeof(base), "%s", cdir);
	else if (geteuid() == 0)
		snprintf(base, sizeof(base), "/var/cache/casfs");
	else if (getenv("XDG_CACHE_HOME") && *getenv("XDG_CACHE_HOME"))
		snprintf(base, sizeof(base), "%s/casfs", getenv("XDG_CACHE_HOME"));
	else if (getenv("HOME") && *getenv("HOME"))
		snprintf(base, sizeof(base), "%s/.cache/casfs", getenv("HOME"));
	else
		snprintf(base, sizeof(base), "/var/tmp/casfs-cache-%u", (unsigned)geteuid());
	char *pc = path_component(rr->pool), *nc = path_component(rr->ns);
	char path[PATH_MAX];
	int n = pc && nc ? snprintf(path, sizeof(path), "%s/%s/%s", base, pc, nc) : -1;
	free(pc);
	free(nc);
	if (n < 0 || n >= (int)sizeof(path)) {
		rc = casfs__err(-ENAMETOOLONG, "cache directory name too long");
		goto fail;
	}
	rr->cache_dir = strdup(path);
	char stg[PATH_MAX + 16];
	snprintf(stg, sizeof(stg), "%s/staging", base);
	rr->staging_dir = strdup(stg);
	if (!rr->cache_dir || !rr->staging_dir) {
		rc = casfs__err(-ENOMEM, "out of memory");
		goto fail;
	}
	if ((rc = mkdirs(rr->cache_dir, 0700)) < 0 || (rc = mkdirs(rr->staging_dir, 0700)) < 0) {
		rc = casfs__errno(rc, "cannot make cache directory under '%s'", base);
		goto fail;
	}

	if ((rc = rl.rados_create(&rr->cl, id)) < 0) {
		rc = casfs__errno(rc, "cannot make a Ceph client '%s'", id);
		goto fail;
	}
	if (conf && *conf) {
		if ((rc = rl.rados_conf_read_file(rr->cl, conf)) < 0) {
			rc = casfs__errno(rc, "cannot read Ceph configuration '%s'", conf);
			goto fail;
		}
	} else if ((rc = rl.rados_conf_read_file(rr->cl, NULL)) < 0) {
		rc = casfs__errno(rc, "no Ceph configuration found (set ceph_conf, or $CEPH_CONF)");
		goto fail;
	}
	char t[16];
	snprintf(t, sizeof(t), "%d", rr->timeout);
	rl.rados_conf_set(rr->cl, "rados_osd_op_timeout", t);
	rl.rados_conf_set(rr->cl, "rados_mon_op_timeout", t);
	rl.rados_conf_set(rr->cl, "client_mount_timeout", t);
	rl.rados_conf_set(rr->cl, "log_to_stderr", "false");
	rl.rados_conf_set(rr->cl, "err_to_stderr", "false");
	if ((rc = rl.rados_connect(rr->cl)) < 0) {
		rc = rc == -ETIMEDOUT || rc == -EINTR
			? casfs__err(-ETIMEDOUT, "cannot reach the Ceph cluster within %d s", rr->timeout)
			: casfs__errno(rc, "cannot connect to the Ceph cluster as client.%s", id);
		goto fail;
	}
	if ((rc = rl.rados_ioctx_create(rr->cl, rr->pool, &rr->io)) < 0) {
		rc = rc == -ENOENT ? casfs__err(-ENOENT, "no Ceph pool '%s'", rr->pool)
				   : casfs__errno(rc, "cannot open Ceph pool '%s'", rr->pool);
		goto fail;
	}
	rl.rados_ioctx_set_namespace(rr->io, rr->ns);
	/* The root object: made on first use (a pool is a root already). */
	rados_write_op_t op = rl.rados_create_write_op();
	rl.rados_write_op_create(op, LIBRADOS_CREATE_IDEMPOTENT, NULL);
	rc = rl.rados_write_op_operate(op, rr->io, "casfs.root", NULL, 0);
	rl.rados_release_write_op(op);
	if (rc < 0) {
		rc = rerr(rc, "cannot open root", spec);
		goto fail;
	}
	return 0;
fail:
	r->be->root_close(r);
	return rc;
}

static const char *rados_root_local_dir(const casfs_root *r)
{
	return ((const struct rroot *)r->b)->cache_dir;
}

static void rados_root_close(casfs_root *r)
{
	struct rroot *rr = R(r);
	if (!rr)
		return;
	if (rr->io)
		rl.rados_ioctx_destroy(rr->io);
	if (rr->cl)
		rl.rados_shutdown(rr->cl);
	pthread_mutex_destroy(&rr->cmu);
	free(rr->pool);
	free(rr->ns);
	free(rr->cache_dir);
	free(rr->staging_dir);
	free(rr);
	r->b = NULL;
}

static int store_ioctx(casfs_root *r, const char *id, rados_ioctx_t *io)
{
	int rc = rl.rados_ioctx_create(R(r)->cl, R(r)->pool, io);
	if (rc < 0)
		return casfs__errno(rc, "cannot open Ceph pool '%s'", R(r)->pool);
	/* "NS/ID"; RADOS namespaces are at most 256 bytes, so a longer one
	 * is "NS//" and the SHA-256 of the id ('/' is never in an id). */
	char ns[NS_MAX + CASFS_ID_MAX + 8];
	snprintf(ns, sizeof(ns), "%s/%s", R(r)->ns, id);
	if (strlen(ns) > 250) {
		char hex[CASFS_HEX_MAX];
		casfs__hash_buf(CASFS_SHA256, id, strlen(id), hex);
		snprintf(ns, sizeof(ns), "%s//%s", R(r)->ns, hex);
	}
	rl.rados_ioctx_set_namespace(*io, ns);
	return 0;
}

static int rados_store_create(casfs_root *r, const char *id, casfs_algo algo)
{
	rados_ioctx_t io;
	int rc = store_ioctx(r, id, &io);
	if (rc < 0)
		return rc;
	const char *an = casfs_algo_name(algo);
	rados_write_op_t op = rl.rados_create_write_op();
	rl.rados_write_op_create(op, LIBRADOS_CREATE_IDEMPOTENT, NULL);
	rl.rados_write_op_setxattr(op, "casfs.algo", an, strlen(an));
	rc = rl.rados_write_op_operate(op, io, LOCK_OBJ, NULL, 0);
	rl.rados_release_write_op(op);
	rl.rados_ioctx_destroy(io);
	if (rc < 0)
		return rerr(rc, "cannot create store", id);
	op = rl.rados_create_write_op();
	size_t kl = strlen(id), vl = strlen(an);
	int prval = 0;
	rl.rados_write_op_omap_cmp2(op, id, LIBRADOS_CMPXATTR_OP_EQ, "", kl, 0, &prval);
	rl.rados_write_op_omap_set2(op, &id, &an, &kl, &vl, 1);
	rc = rl.rados_write_op_operate(op, R(r)->io, "casfs.root", NULL, 0);
	rl.rados_release_write_op(op);
	if (rc == -ECANCELED)
		return casfs__err(-EEXIST, "store '%s' exists", id);
	return rc < 0 ? rerr(rc, "cannot create store", id) : 0;
}

static int rados_store_remove(casfs_root *r, const char *id)
{
	rados_write_op_t op = rl.rados_create_write_op();
	size_t kl = strlen(id);
	rl.rados_write_op_omap_rm_keys2(op, &id, &kl, 1);
	int rc = rl.rados_write_op_operate(op, R(r)->io, "casfs.root", NULL, 0);
	rl.rados_release_write_op(op);
	if (rc < 0)
		return rerr(rc, "cannot remove store", id);
	/* What is left in its namespace: the label object and the journal. */
	rados_ioctx_t io;
	if (store_ioctx(r, id, &io) < 0)
		return 0;
	rados_list_ctx_t ctx;
	if (rl.rados_nobjects_list_open(io, &ctx) == 0) {
		const char *e;
		while (rl.rados_nobjects_list_next(ctx, &e, NULL, NULL) == 0)
			rl.rados_remove(io, e);
		rl.rados_nobjects_list_close(ctx);
	}
	rl.rados_ioctx_destroy(io);
	return 0;
}

struct list_ud {
	casfs_name_fn fn;
	void *ud;
};

static int list_store_key(const char *key, size_t klen, const char *val, size_t vlen, void *ud,
			  char **skip)
{
	(void)klen, (void)val, (void)vlen, (void)skip;
	struct list_ud *l = ud;
	int rc = l->fn(key, l->ud);
	return rc ? (rc == 1 ? -ECANCELED : rc) : 0; /* keep fn's value */
}

static int rados_store_list(casfs_root *r, casfs_name_fn fn, void *ud)
{
	struct list_ud l = { fn, ud };
	int rc = omap_walk(R(r)->io, "casfs.root", "", list_store_key, &l);
	return rc == -ECANCELED ? 1 : rc;
}

static int rados_store_open(casfs_store *s)
{
	const char *key = s->id;
	char *val = NULL;
	int rc = omap_get(R(s->root)->io, "casfs.root", &key, 1, &val, NULL);
	if (rc < 0)
		return rerr(rc, "cannot open store", s->id);
	if (!val)
		return casfs__err(-ENOENT, "no store '%s' in this root", s->id);
	rc = casfs_algo_parse(&s->algo, val);
	free(val);
	if (rc < 0)
		return casfs__err(-EIO, "store '%s' has an unknown algorithm", s->id);
	struct rstore *rs = calloc(1, sizeof(*rs));
	if (!rs)
		return casfs__err(-ENOMEM, "out of memory");
	pthread_mutex_init(&rs->mu, NULL);
	s->b = rs;
	if ((rc = store_ioctx(s->root, s->id, &rs->io)) < 0)
		return rc;
	char path[PATH_MAX];
	snprintf(path, sizeof(path), "%s/%s", R(s->root)->cache_dir, s->id);
	if (!(rs->cache = strdup(path)))
		return casfs__err(-ENOMEM, "out of memory");
	struct ident id = as_process();
	rc = mkdirs(rs->cache, 0700);
	as_before(id);
	if (rc < 0)
		return casfs__errno(rc, "cannot make cache directory '%s'", path);
	char seg[16] = "";
	rc = rl.rados_getxattr(rs->io, LOCK_OBJ, "casfs.jseg", seg, sizeof(seg) - 1);
	if (rc > 0) {
		seg[rc] = '\0';
		rs->jseg = (unsigned)strtoul(seg, NULL, 10);
	}
	return 0;
}

static void rados_store_close(casfs_store *s)
{
	struct rstore *rs = S(s);
	if (!rs)
		return;
	if (rs->io)
		rl.rados_ioctx_destroy(rs->io);
	pthread_mutex_destroy(&rs->mu);
	free(rs->cache);
	free(rs->cookies);
	free(rs->busy);
	free(rs);
	s->b = NULL;
}

/* -------------------------------------------------------------- staging */

static int rados_stage_create(casfs_store *s, struct casfs_stage *st)
{
	const char *dir = R(s->root)->staging_dir;
	struct ident id = as_process();
	int fd = open(dir, O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
	if (fd < 0 && errno == ENOENT && mkdirs(dir, 0700) == 0)
		fd = open(dir, O_TMPFILE | O_RDWR | O_CLOEXEC, 0600); /* removed by hand */
	int e = errno;
	as_before(id);
	if (fd < 0)
		return casfs__errno(-e, "cannot make a staging file in '%s'", dir);
	st->fd = fd;
	snprintf(st->name, sizeof(st->name), "tmpfile");
	st->synced = false;
	return 0;
}

static void rados_stage_discard(casfs_store *s, struct casfs_stage *st)
{
	(void)s;
	if (st->fd >= 0)
		close(st->fd);
	st->fd = -1;
}

static int rados_stage_clean(casfs_store *s, unsigned *removed)
{
	(void)s;
	*removed = 0; /* O_TMPFILE staging files vanish with their process */
	return 0;
}

static int rados_session_begin(casfs_store *s, int *session, int64_t *unclean_since)
{
	(void)s;
	/* A blob's head is created last and whole: a killed daemon leaves no
	 * half-stored blob to check. */
	*session = -1;
	*unclean_since = 0;
	return 0;
}

static void rados_session_end(casfs_store *s, int session)
{
	(void)s, (void)session;
}

static int rados_stage_sync(casfs_store *s, struct casfs_stage *const *st, size_t n)
{
	(void)s;
	/* Durable once uploaded: a RADOS write is acknowledged when every
	 * replica has it. */
	for (size_t i = 0; i < n; i++)
		st[i]->synced = true;
	return 0;
}

/* ---------------------------------------------------------------- blobs */

static void chunk_name(char *out, size_t n, const char *hex, const char *nonce, uint64_t i)
{
	if (i == 0)
		snprintf(out, n, "b.%s", hex);
	else
		snprintf(out, n, "t.%s.%s.%llu", hex, nonce, (unsigned long long)i);
}

/* Head attributes of a blob. */
struct head {
	uint64_t size;
	int64_t fresh;
	char tail[32];
};

static int head_read(casfs_store *s, const char *hex, struct head *h)
{
	char oid[CASFS_HEX_MAX + 8];
	chunk_name(oid, sizeof(oid), hex, "", 0);
	rados_read_op_t op = rl.rados_create_read_op();
	rados_xattrs_iter_t it;
	int prval = 0;
	rl.rados_read_op_getxattrs(op, &it, &prval);
	int rc = rl.rados_read_op_operate(op, S(s)->io, oid, 0);
	if (rc == 0 && prval < 0)
		rc = prval;
	if (rc < 0) {
		rl.rados_getxattrs_end(it);
		rl.rados_release_read_op(op);
		return rc == -ENOENT ? -ENOENT : rerr(rc, "cannot read blob", hex);
	}
	memset(h, 0, sizeof(*h));
	bool have_size = false;
	const char *name, *val;
	size_t len;
	while (rl.rados_getxattrs_next(it, &name, &val, &len) == 0 && name) {
		char v[32];
		size_t n = len < sizeof(v) - 1 ? len : sizeof(v) - 1;
		if (n)
			memcpy(v, val, n);
		v[n] = '\0';
		if (!strcmp(name, "casfs.size")) {
			h->size = strtoull(v, NULL, 10);
			have_size = true;
		} else if (!strcmp(name, "casfs.fresh")) {
			h->fresh = strtoll(v, NULL, 10);
		} else if (!strcmp(name, "casfs.tail")) {
			memcpy(h->tail, v, n + 1);
		}
	}
	rl.rados_getxattrs_end(it);
	rl.rados_release_read_op(op);
	if (!have_size)
		return casfs__err(-EIO, "blob %s in store '%s' has no size: not written by casfs", hex, s->id);
	return 0;
}

/* Marks an existing blob as just stored so a running gc keeps it;
 * -ENOENT if it is not there. */
static int freshen(casfs_store *s, const char *hex)
{
	char oid[CASFS_HEX_MAX + 8], now[24];
	chunk_name(oid, sizeof(oid), hex, "", 0);
	fresh_now(now);
	rados_write_op_t op = rl.rados_create_write_op();
	rl.rados_write_op_assert_exists(op);
	rl.rados_write_op_setxattr(op, "casfs.fresh", now, strlen(now));
	int rc = rl.rados_write_op_operate(op, S(s)->io, oid, NULL, 0);
	rl.rados_release_write_op(op);
	return rc;
}

/* A window of asynchronous chunk transfers. */
struct xfer {
	rados_completion_t c[INFLIGHT];
	char *buf[INFLIGHT];
	size_t len[INFLIGHT];
	uint64_t off[INFLIGHT];
	int out_fd[INFLIGHT];
	bool used[INFLIGHT];
};

static int xfer_wait(struct xfer *x, int i)
{
	if (!x->used[i])
		return 0;
	rl.rados_aio_wait_for_complete(x->c[i]);
	int rc = rl.rados_aio_get_return_value(x->c[i]);
	rl.rados_aio_release(x->c[i]);
	x->used[i] = false;
	if (rc >= 0 && x->out_fd[i] >= 0) {
		/* A read: rc is the byte count. */
		if ((size_t)rc != x->len[i])
			return -EIO;
		rc = casfs__pwrite_all(x->out_fd[i], x->buf[i], x->len[i], x->off[i]);
	}
	return rc < 0 ? rc : 0;
}

static void xfer_free(struct xfer *x)
{
	for (int i = 0; i < INFLIGHT; i++) {
		xfer_wait(x, i);
		free(x->buf[i]);
	}
}

static int upload_tails(casfs_store *s, int fd, const char *hex, const char *nonce, uint64_t size)
{
	struct xfer x = { 0 };
	int rc = 0;
	uint64_t nchunks = (size + CHUNK - 1) / CHUNK;
	for (uint64_t i = 1; i < nchunks && rc == 0; i++) {
		int slot = (int)(i % INFLIGHT);
		if ((rc = xfer_wait(&x, slot)) < 0)
			break;
		if (!x.buf[slot] && !(x.buf[slot] = malloc(CHUNK))) {
			rc = -ENOMEM;
			break;
		}
		uint64_t off = i * CHUNK;
		size_t want = size - off < CHUNK ? (size_t)(size - off) : CHUNK;
		ssize_t got = pread(fd, x.buf[slot], want, (off_t)off);
		if (got != (ssize_t)want) {
			rc = got < 0 ? -errno : -EIO;
			break;
		}
		char oid[CASFS_HEX_MAX + 64];
		chunk_name(oid, sizeof(oid), hex, nonce, i);
		x.out_fd[slot] = -1;
		x.len[slot] = want;
		if ((rc = rl.rados_aio_create_completion2(NULL, NULL, &x.c[slot])) < 0)
			break;
		x.used[slot] = true;
		rc = rl.rados_aio_write_full(S(s)->io, oid, x.c[slot], x.buf[slot], want);
	}
	for (int i = 0; i < INFLIGHT; i++) {
		int w = xfer_wait(&x, i);
		if (rc == 0)
			rc = w;
	}
	xfer_free(&x);
	return rc;
}

static void remove_tails(casfs_store *s, const char *hex, const char *nonce, uint64_t size)
{
	uint64_t nchunks = (size + CHUNK - 1) / CHUNK;
	for (uint64_t i = 1; i < nchunks; i++) {
		char oid[CASFS_HEX_MAX + 64];
		chunk_name(oid, sizeof(oid), hex, nonce, i);
		rl.rados_remove(S(s)->io, oid);
	}
}

static int lock_renew(casfs_store *s, bool force);

static int rados_blob_publish(casfs_store *s, struct casfs_stage *st, const char *hex)
{
	int rc = freshen(s, hex);
	if (rc == 0) {
		rc = 1; /* stored already: nothing is uploaded again */
		goto out;
	}
	if (rc != -ENOENT) {
		rc = rerr(rc, "cannot store blob", hex);
		goto out;
	}
	struct stat sb;
	if (fstat(st->fd, &sb) < 0) {
		rc = casfs__errno(-errno, "cannot stat staging file");
		goto out;
	}
	uint64_t size = (uint64_t)sb.st_size;
	char nonce[17] = "";
	if (size > CHUNK) {
		casfs__randhex(nonce, 16);
		if ((rc = upload_tails(s, st->fd, hex, nonce, size)) < 0) {
			remove_tails(s, hex, nonce, size);
			rc = rerr(rc, "cannot upload blob", hex);
			goto out;
		}
	}
	size_t hlen = size < CHUNK ? (size_t)size : CHUNK;
	char *head = malloc(hlen ? hlen : 1);
	if (!head) {
		rc = casfs__err(-ENOMEM, "out of memory");
		goto out;
	}
	ssize_t got = pread(st->fd, head, hlen, 0);
	if (got != (ssize_t)hlen) {
		rc = casfs__errno(got < 0 ? -errno : -EIO, "cannot read staging file");
		free(head);
		goto out;
	}
	/* After a long upload the lock of the label change this publish is
	 * part of may be near its end (or, if it ran out and a gc came
	 * between, is taken again here): renew it before the head exists. */
	if ((rc = lock_renew(s, false)) < 0) {
		free(head);
		remove_tails(s, hex, nonce, size);
		goto out;
	}
	char sz[24], now[24];
	snprintf(sz, sizeof(sz), "%llu", (unsigned long long)size);
	fresh_now(now);
	char oid[CASFS_HEX_MAX + 8];
	chunk_name(oid, sizeof(oid), hex, "", 0);
	rados_write_op_t op = rl.rados_create_write_op();
	rl.rados_write_op_create(op, LIBRADOS_CREATE_EXCLUSIVE, NULL);
	rl.rados_write_op_write_full(op, head, hlen);
	rl.rados_write_op_setxattr(op, "casfs.size", sz, strlen(sz));
	rl.rados_write_op_setxattr(op, "casfs.fresh", now, strlen(now));
	rl.rados_write_op_setxattr(op, "casfs.tail", nonce, strlen(nonce));
	rc = rl.rados_write_op_operate(op, S(s)->io, oid, NULL, 0);
	rl.rados_release_write_op(op);
	free(head);
	if (rc == -EEXIST) {
		/* Someone stored the same content meanwhile: keep theirs. */
		remove_tails(s, hex, nonce, size);
		rc = freshen(s, hex) == 0 ? 1 : rerr(-EIO, "cannot store blob", hex);
	} else if (rc < 0) {
		remove_tails(s, hex, nonce, size);
		rc = rerr(rc, "cannot store blob", hex);
	}
out:
	rados_stage_discard(s, st);
	return rc;
}

static int rados_publish_sync(casfs_store *s)
{
	(void)s;
	return 0;
}

static int rados_blob_stat(casfs_store *s, const char *hex, uint64_t *size, int64_t *mtime_ns)
{
	struct head h;
	int rc = head_read(s, hex, &h);
	if (rc < 0)
		return rc;
	if (size)
		*size = h.size;
	if (mtime_ns)
		*mtime_ns = h.fresh;
	return 0;
}

/* Reads chunks [first, last] of a blob into fd at their blob offsets minus
 * base, INFLIGHT at a time. */
static int fetch_chunks(casfs_store *s, const char *hex, const struct head *h, uint64_t first,
			uint64_t last, int fd, uint64_t base)
{
	struct xfer x = { 0 };
	int rc = 0;
	for (uint64_t i = first; i <= last && rc == 0; i++) {
		int slot = (int)(i % INFLIGHT);
		if ((rc = xfer_wait(&x, slot)) < 0)
			break;
		if (!x.buf[slot] && !(x.buf[slot] = malloc(CHUNK))) {
			rc = -ENOMEM;
			break;
		}
		uint64_t off = i * CHUNK;
		x.len[slot] = h->size - off < CHUNK ? (size_t)(h->size - off) : CHUNK;
		x.off[slot] = off - base;
		x.out_fd[slot] = fd;
		char oid[CASFS_HEX_MAX + 64];
		chunk_name(oid, sizeof(oid), hex, h->tail, i);
		if ((rc = rl.rados_aio_create_completion2(NULL, NULL, &x.c[slot])) < 0)
			break;
		x.used[slot] = true;
		rc = rl.rados_aio_read(S(s)->io, oid, x.c[slot], x.buf[slot], x.len[slot], 0);
	}
	for (int i = 0; i < INFLIGHT; i++) {
		int w = xfer_wait(&x, i);
		if (rc == 0)
			rc = w;
	}
	xfer_free(&x);
	if (rc == -ENOENT)
		return casfs__err(-EIO, "blob %s in store '%s' is missing a part", hex, s->id);
	return rc < 0 ? rerr(rc, "cannot read blob", hex) : 0;
}

static int rados_blob_open(casfs_store *s, const char *hex, int *out)
{
	struct head h;
	int rc = head_read(s, hex, &h);
	if (rc == -ENOENT)
		return casfs__err(-ENOENT, "no blob %s in store '%s'", hex, s->id);
	if (rc < 0)
		return rc;
	struct ident id = as_process();
	int fd = open(R(s->root)->staging_dir, O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
	int e = errno;
	as_before(id);
	if (fd < 0)
		return casfs__errno(-e, "cannot make a local copy of blob %s", hex);
	if (h.size > 0 && (rc = fetch_chunks(s, hex, &h, 0, (h.size - 1) / CHUNK, fd, 0)) < 0) {
		close(fd);
		return rc;
	}
	*out = fd;
	return 0;
}

/* ---------------------------------------------------------------- cache */

struct centry {
	char *path;
	int64_t atime;
	uint64_t size;
};

static int centry_cmp(const void *a, const void *b)
{
	const struct centry *x = a, *y = b;
	return x->atime < y->atime ? -1 : x->atime > y->atime;
}

static void cache_scan(const char *dir, struct centry **v, size_t *n, size_t *cap, uint64_t *total,
		       int depth)
{
	DIR *d = opendir(dir);
	if (!d)
		return;
	struct dirent *e;
	while ((e = readdir(d))) {
		if (e->d_name[0] == '.')
			continue;
		char path[PATH_MAX];
		if (snprintf(path, sizeof(path), "%s/%s", dir, e->d_name) >= (int)sizeof(path))
			continue;
		struct stat sb;
		if (lstat(path, &sb) < 0)
			continue;
		if (S_ISDIR(sb.st_mode)) {
			if (depth < 1)
				cache_scan(path, v, n, cap, total, depth + 1);
			continue;
		}
		if (!S_ISREG(sb.st_mode))
			continue;
		*total += (uint64_t)sb.st_size;
		if (!v)
			continue;
		if (*n == *cap) {
			size_t nc = *cap ? *cap * 2 : 256;
			struct centry *nv = realloc(*v, nc * sizeof(**v));
			if (!nv)
				continue;
			*v = nv;
			*cap = nc;
		}
		char *p = strdup(path);
		if (!p)
			continue;
		(*v)[(*n)++] = (struct centry){ p, (int64_t)sb.st_atim.tv_sec * 1000000000LL + sb.st_atim.tv_nsec,
					       (uint64_t)sb.st_size };
	}
	closedir(d);
}

/* Counts added bytes; over the bound, removes the least recently used
 * chunk files (of every store of the root) down to 90% of it. */
static void cache_account(casfs_root *r, uint64_t added)
{
	struct rroot *rr = R(r);
	pthread_mutex_lock(&rr->cmu);
	if (!rr->cache_counted) {
		uint64_t total = 0;
		cache_scan(rr->cache_dir, NULL, NULL, NULL, &total, 0);
		rr->cache_used = total; /* includes what was just added */
		rr->cache_counted = true;
	} else {
		rr->cache_used += added;
	}
	if (rr->cache_used > rr->cache_size) {
		struct centry *v = NULL;
		size_t n = 0, cap = 0;
		uint64_t total = 0;
		cache_scan(rr->cache_dir, &v, &n, &cap, &total, 0);
		qsort(v, n, sizeof(*v), centry_cmp);
		uint64_t goal = rr->cache_size / 10 * 9;
		for (size_t i = 0; i < n; i++) {
			if (total > goal && unlink(v[i].path) == 0)
				total -= v[i].size;
			free(v[i].path);
		}
		free(v);
		rr->cache_used = total;
	}
	pthread_mutex_unlock(&rr->cmu);
}

static int blob_open_at(casfs_store *s, const char *hex, uint64_t off, int *out, uint64_t *start,
			uint64_t *len);

static int rados_blob_open_at(casfs_store *s, const char *hex, uint64_t off, int *out,
			      uint64_t *start, uint64_t *len)
{
	struct ident id = as_process();
	int rc = blob_open_at(s, hex, off, out, start, len);
	as_before(id);
	return rc;
}

static int blob_open_at(casfs_store *s, const char *hex, uint64_t off, int *out, uint64_t *start,
			uint64_t *len)
{
	uint64_t i = off / CHUNK;
	char path[PATH_MAX];
	snprintf(path, sizeof(path), "%s/%s.%llu", S(s)->cache, hex, (unsigned long long)i);
	int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
	struct stat sb;
	if (fd >= 0 && fstat(fd, &sb) == 0) {
		/* A hit: the chunk's length tells where the blob ends. */
		if (off - i * CHUNK >= (uint64_t)sb.st_size) {
			close(fd);
			return -ENXIO;
		}
		futimens(fd, (struct timespec[2]){ { .tv_nsec = UTIME_NOW }, { .tv_nsec = UTIME_OMIT } });
		*out = fd;
		*start = i * CHUNK;
		*len = (uint64_t)sb.st_size;
		return 0;
	}
	if (fd >= 0)
		close(fd);
	struct head h;
	int rc = head_read(s, hex, &h);
	if (rc == -ENOENT)
		return casfs__err(-ENOENT, "no blob %s in store '%s'", hex, s->id);
	if (rc < 0)
		return rc;
	if (off >= h.size)
		return -ENXIO;
	/* Fetch into an unnamed file, then give it its name: a chunk file
	 * is always whole. */
	fd = open(S(s)->cache, O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
	if (fd < 0 && errno == ENOENT && mkdirs(S(s)->cache, 0700) == 0)
		fd = open(S(s)->cache, O_TMPFILE | O_RDWR | O_CLOEXEC, 0600); /* removed by hand */
	if (fd < 0)
		return casfs__errno(-errno, "cannot cache blob %s", hex);
	if ((rc = fetch_chunks(s, hex, &h, i, i, fd, i * CHUNK)) < 0) {
		close(fd);
		return rc;
	}
	char proc[64];
	snprintf(proc, sizeof(proc), "/proc/self/fd/%d", fd);
	if (linkat(AT_FDCWD, proc, AT_FDCWD, path, AT_SYMLINK_FOLLOW) == 0 || errno == EEXIST) {
		uint64_t n = h.size - i * CHUNK < CHUNK ? h.size - i * CHUNK : CHUNK;
		cache_account(s->root, n);
	}
	*out = fd;
	*start = i * CHUNK;
	*len = h.size - i * CHUNK < CHUNK ? h.size - i * CHUNK : CHUNK;
	return 0;
}

static int list_blob_objects(casfs_store *s, const char *prefix, casfs_name_fn fn, void *ud)
{
	rados_list_ctx_t ctx;
	int rc = rl.rados_nobjects_list_open(S(s)->io, &ctx);
	if (rc < 0)
		return rerr(rc, "cannot list blobs of store", s->id);
	const char *e;
	size_t plen = strlen(prefix);
	while ((rc = rl.rados_nobjects_list_next(ctx, &e, NULL, NULL)) == 0) {
		if (strncmp(e, prefix, plen) != 0)
			continue;
		if ((rc = fn(e + plen, ud)) != 0)
			break;
	}
	rl.rados_nobjects_list_close(ctx);
	if (rc == -ENOENT)
		return 0; /* the end */
	return rc < 0 ? rerr(rc, "cannot list blobs of store", s->id) : rc;
}

static int rados_blob_list(casfs_store *s, bool all, casfs_name_fn fn, void *ud)
{
	(void)all;
	return list_blob_objects(s, "b.", fn, ud);
}

static void lease_renew(casfs_store *s);

static int rados_blob_delete(casfs_store *s, const char *hex, int64_t cutoff_ns, uint64_t *size)
{
	lease_renew(s);
	struct head h;
	int rc = head_read(s, hex, &h);
	if (rc < 0)
		return rc;
	if (size)
		*size = h.size;
	if (h.fresh >= cutoff_ns)
		return -EAGAIN;
	char oid[CASFS_HEX_MAX + 8], cut[24];
	chunk_name(oid, sizeof(oid), hex, "", 0);
	snprintf(cut, sizeof(cut), "%020lld", (long long)cutoff_ns);
	/* Removed only if nobody stored it again since we looked: its
	 * freshness still before the cutoff (equal-width decimal strings
	 * compare like the numbers). */
	rados_write_op_t op = rl.rados_create_write_op();
	rl.rados_write_op_cmpxattr(op, "casfs.fresh", LIBRADOS_CMPXATTR_OP_GT, cut, strlen(cut));
	rl.rados_write_op_remove(op);
	rc = rl.rados_write_op_operate(op, S(s)->io, oid, NULL, 0);
	rl.rados_release_write_op(op);
	if (rc == -ECANCELED)
		return -EAGAIN;
	if (rc < 0)
		return rc == -ENOENT ? -ENOENT : rerr(rc, "cannot remove blob", hex);
	remove_tails(s, hex, h.tail, h.size);
	/* Its cached chunks go too. */
	struct ident id = as_process();
	for (uint64_t i = 0; i * CHUNK < h.size || i == 0; i++) {
		char path[PATH_MAX];
		snprintf(path, sizeof(path), "%s/%s.%llu", S(s)->cache, hex, (unsigned long long)i);
		unlink(path);
	}
	as_before(id);
	return 0;
}

static int rados_blob_quarantine(casfs_store *s, const char *name)
{
	char oid[PATH_MAX], q[PATH_MAX], rnd[13];
	snprintf(oid, sizeof(oid), "b.%s", name);
	casfs__randhex(rnd, 12);
	snprintf(q, sizeof(q), "q.%s.%s", name, rnd);
	/* No rename in RADOS: copy the head (its tail chunks stay, named by
	 * the copy's casfs.tail), then remove it. */
	uint64_t size = 0;
	time_t mt;
	int rc = rl.rados_stat(S(s)->io, oid, &size, &mt);
	if (rc < 0)
		return rc;
	char *buf = malloc(size ? size : 1);
	if (!buf)
		return -ENOMEM;
	rc = rl.rados_read(S(s)->io, oid, buf, size, 0);
	if (rc >= 0) {
		char tail[32] = "";
		int t = rl.rados_getxattr(S(s)->io, oid, "casfs.tail", tail, sizeof(tail) - 1);
		rados_write_op_t op = rl.rados_create_write_op();
		rl.rados_write_op_write_full(op, buf, (size_t)rc);
		if (t > 0)
			rl.rados_write_op_setxattr(op, "casfs.tail", tail, (size_t)t);
		rc = rl.rados_write_op_operate(op, S(s)->io, q, NULL, 0);
		rl.rados_release_write_op(op);
	}
	free(buf);
	if (rc >= 0)
		rc = rl.rados_remove(S(s)->io, oid);
	return rc < 0 ? rerr(rc, "cannot move aside blob", name) : 0;
}

/* ---------------------------------------------------------------- locks */

/*
 * gc against labellers on other machines: a RADOS lock on the label
 * object.  A label change (and a commit, from publishing its blob to
 * pointing the label at it) holds it shared, gc and fsck --repair hold it
 * exclusive, so gc never lists the labels or deletes a blob while a label
 * is being pointed at one.
 *
 * A lock of a client that died must not stop gc for long, so a shared lock
 * lasts SHARED_SECONDS and every label write carries cls_lock's
 * assert_locked: the write lands only while this thread's lock is still
 * held.  If the lock ran out (a stalled client) the write fails, the lock is
 * taken again (after any gc that took over) and the blob checked again.  A
 * long upload renews the lock before it creates the blob's head.
 */

/* The shared lock this thread holds, for assert_locked and renewal. */
static __thread struct {
	casfs_store *s;
	char cookie[40];
	int64_t since;
} tl_lock;

static int take_lock(casfs_store *s, bool exclusive, const char *cookie, uint8_t flags)
{
	struct timeval dur = { .tv_sec = exclusive ? LOCK_SECONDS : SHARED_SECONDS };
	int64_t deadline = casfs__now_ns() + (int64_t)(LOCK_SECONDS + R(s->root)->timeout) * 1000000000LL;
	int rc;
	for (unsigned wait_us = 1000;; wait_us = wait_us < 50000 ? wait_us * 2 : wait_us) {
		rc = exclusive ? rl.rados_lock_exclusive(S(s)->io, LOCK_OBJ, LOCK_NAME, cookie, "gc", &dur, flags)
			       : rl.rados_lock_shared(S(s)->io, LOCK_OBJ, LOCK_NAME, cookie, "labels",
						   "label change", &dur, flags);
		if (rc != -EBUSY || casfs__now_ns() > deadline)
			break;
		usleep(wait_us); /* gc (or, for gc, label changes) hold it */
	}
	if (rc == -EBUSY)
		return casfs__err(-EBUSY, "store '%s' stayed locked by %s for %d s", s->id,
				  exclusive ? "label changes" : "gc", LOCK_SECONDS + R(s->root)->timeout);
	return rc < 0 ? rerr(rc, "cannot lock store", s->id) : 0;
}

/* Adds "this thread's shared lock is still held" to a label write. */
static void lock_assert(casfs_store *s, rados_write_op_t op, char *buf, size_t size, int *prval)
{
	if (tl_lock.s != s)
		return; /* no shared lock: the caller holds the exclusive one */
	/* cls_lock_assert_op, Ceph-encoded: version 1, compat 1, length,
	 * then name, type (2: shared), cookie, tag. */
	const char *name = LOCK_NAME, *tag = "labels";
	size_t nl = strlen(name), cl = strlen(tl_lock.cookie), tgl = strlen(tag);
	size_t body = 4 + nl + 1 + 4 + cl + 4 + tgl;
	if (6 + body > size)
		return;
	char *p = buf;
	*p++ = 1;
	*p++ = 1;
	uint32_t v = (uint32_t)body;
	memcpy(p, &v, 4), p += 4; /* little-endian, as on every machine we build for */
	v = (uint32_t)nl;
	memcpy(p, &v, 4), p += 4;
	memcpy(p, name, nl), p += nl;
	*p++ = 2;
	v = (uint32_t)cl;
	memcpy(p, &v, 4), p += 4;
	memcpy(p, tl_lock.cookie, cl), p += cl;
	v = (uint32_t)tgl;
	memcpy(p, &v, 4), p += 4;
	memcpy(p, tag, tgl), p += tgl;
	rl.rados_write_op_exec(op, "lock", "assert_locked", buf, (size_t)(p - buf), prval);
}

/* Renews this thread's shared lock (taking it again if it ran out and a gc
 * came between) when half of its time is gone, or always with force. */
static int lock_renew(casfs_store *s, bool force)
{
	if (tl_lock.s != s)
		return 0;
	int64_t now = casfs__now_ns();
	if (!force && now - tl_lock.since < (int64_t)SHARED_SECONDS * 500000000LL)
		return 0;
	int rc = take_lock(s, false, tl_lock.cookie, LIBRADOS_LOCK_FLAG_MAY_RENEW);
	if (rc == 0)
		tl_lock.since = now;
	return rc;
}

/* After a label write failed: 1 if it was because our lock ran out (it is
 * held again now), 0 if not, or an error. */
static int lock_lost(casfs_store *s, int rc)
{
	if (rc != -EBUSY || tl_lock.s != s)
		return 0;
	int r = lock_renew(s, true);
	return r < 0 ? r : 1;
}

static int rados_store_lock(casfs_store *s, bool exclusive, int *token)
{
	struct rstore *rs = S(s);
	pthread_mutex_lock(&rs->mu);
	size_t slot = 0;
	while (slot < rs->ncookies && rs->busy[slot])
		slot++;
	if (slot == rs->ncookies) {
		size_t n = rs->ncookies ? rs->ncookies * 2 : 8;
		char (*c)[40] = realloc(rs->cookies, n * sizeof(*c));
		if (c)
			rs->cookies = c;
		bool *b = realloc(rs->busy, n * sizeof(*b));
		if (b)
			rs->busy = b;
		if (!c || !b) {
			pthread_mutex_unlock(&rs->mu);
			return casfs__err(-ENOMEM, "out of memory");
		}
		for (size_t i = rs->ncookies; i < n; i++)
			rs->busy[i] = false;
		rs->ncookies = n;
	}
	rs->busy[slot] = true;
	char cookie[40];
	casfs__randhex(cookie, 32);
	memcpy(rs->cookies[slot], cookie, sizeof(cookie));
	pthread_mutex_unlock(&rs->mu);

	int rc = take_lock(s, exclusive, cookie, 0);
	if (rc < 0) {
		pthread_mutex_lock(&rs->mu);
		rs->busy[slot] = false;
		pthread_mutex_unlock(&rs->mu);
		return rc;
	}
	if (exclusive) {
		pthread_mutex_lock(&rs->mu);
		rs->lease_until = casfs__now_ns() + (int64_t)LOCK_SECONDS * 1000000000LL;
		rs->lease_slot = slot;
		pthread_mutex_unlock(&rs->mu);
	} else {
		tl_lock.s = s;
		memcpy(tl_lock.cookie, cookie, sizeof(cookie));
		tl_lock.since = casfs__now_ns();
	}
	*token = (int)slot;
	return 0;
}

/* A long gc renews its lock before half of its time is gone. */
static void lease_renew(casfs_store *s)
{
	struct rstore *rs = S(s);
	int64_t now = casfs__now_ns();
	pthread_mutex_lock(&rs->mu);
	bool due = rs->lease_until && rs->lease_until - now < (int64_t)LOCK_SECONDS * 500000000LL;
	char cookie[40];
	if (due)
		memcpy(cookie, rs->cookies[rs->lease_slot], sizeof(cookie));
	pthread_mutex_unlock(&rs->mu);
	if (!due)
		return;
	struct timeval dur = { .tv_sec = LOCK_SECONDS };
	if (rl.rados_lock_exclusive(rs->io, LOCK_OBJ, LOCK_NAME, cookie, "gc", &dur,
				 LIBRADOS_LOCK_FLAG_MAY_RENEW) == 0) {
		pthread_mutex_lock(&rs->mu);
		rs->lease_until = now + (int64_t)LOCK_SECONDS * 1000000000LL;
		pthread_mutex_unlock(&rs->mu);
	}
}

static void rados_store_unlock(casfs_store *s, int token)
{
	struct rstore *rs = S(s);
	if (token < 0)
		return;
	pthread_mutex_lock(&rs->mu);
	char cookie[40];
	memcpy(cookie, rs->cookies[token], sizeof(cookie));
	if (rs->lease_until && rs->lease_slot == (size_t)token)
		rs->lease_until = 0;
	pthread_mutex_unlock(&rs->mu);
	if (tl_lock.s == s && !strcmp(tl_lock.cookie, cookie))
		tl_lock.s = NULL;
	rl.rados_unlock(rs->io, LOCK_OBJ, LOCK_NAME, cookie);
	pthread_mutex_lock(&rs->mu);
	rs->busy[token] = false;
	pthread_mutex_unlock(&rs->mu);
}

/* --------------------------------------------------------------- labels */

/* A label's value: "hex mode mtime ctime uid gid" (a directory's: "d ..."). */
struct lval {
	char hex[CASFS_HEX_MAX]; /* "d" for a directory */
	uint32_t mode;
	int64_t mtime, ctime;
	uint32_t uid, gid;
};

static void lval_parse(const char *v, struct lval *out)
{
	memset(out, 0, sizeof(*out));
	long long mt = 0, ct = 0;
	unsigned mode = 0644, uid = 0, gid = 0;
	char hex[CASFS_HEX_MAX] = "";
	int n = sscanf(v, "%64s %o %lld %lld %u %u", hex, &mode, &mt, &ct, &uid, &gid);
	if (n < 1)
		hex[0] = '\0';
	snprintf(out->hex, sizeof(out->hex), "%s", hex);
	out->mode = mode & 07777;
	out->mtime = mt;
	out->ctime = ct;
	out->uid = uid;
	out->gid = gid;
}

static void lval_format(const struct lval *l, char *out, size_t n)
{
	snprintf(out, n, "%s %o %lld %lld %u %u", l->hex, (unsigned)l->mode, (long long)l->mtime,
		 (long long)l->ctime, l->uid, l->gid);
}

static void lval_new(struct lval *l, const char *hex, uint32_t mode)
{
	memset(l, 0, sizeof(*l));
	snprintf(l->hex, sizeof(l->hex), "%s", hex);
	l->mode = mode & 07777;
	l->mtime = l->ctime = casfs__now_ns();
	/* The thread's filesystem identity (the mount sets the caller's). */
	l->uid = (uint32_t)setfsuid((uid_t)-1);
	l->gid = (uint32_t)setfsgid((gid_t)-1);
}

/* The raw value of name and of name + "/" (a made directory), and whether
 * any key lies under name + "/" (a directory in use). */
struct lnode {
	char *val;     /* NULL if no label */
	char *dval;    /* NULL if no made directory */
	bool children;
};

static void lnode_free(struct lnode *n)
{
	free(n->val);
	free(n->dval);
}

static int lnode_read(casfs_store *s, const char *name, struct lnode *n)
{
	memset(n, 0, sizeof(*n));
	char dkey[CASFS_LABEL_MAX + 2];
	snprintf(dkey, sizeof(dkey), "%s/", name);
	const char *keys[2] = { name, dkey };
	size_t klens[2] = { strlen(name), strlen(dkey) };
	/* One round trip: both keys, and the first two keys under name/
	 * (one of them may be name/ itself). */
	rados_read_op_t op = rl.rados_create_read_op();
	rados_omap_iter_t kit, cit;
	int kval = 0, cval = 0;
	unsigned char more = 0;
	rl.rados_read_op_omap_get_vals_by_keys2(op, keys, 2, klens, &kit, &kval);
	rl.rados_read_op_omap_get_vals2(op, "", dkey, 2, &cit, &more, &cval);
	int rc = rl.rados_read_op_operate(op, S(s)->io, LOCK_OBJ, 0);
	if (rc == 0)
		rc = kval < 0 ? kval : cval;
	if (rc == 0) {
		char *k, *v;
		size_t kl, vl;
		while (rc == 0 && rl.rados_omap_get_next2(kit, &k, &v, &kl, &vl) == 0 && k) {
			char **slot = kl == klens[0] && !memcmp(k, name, kl) ? &n->val : &n->dval;
			if (!*slot && !(*slot = strndup(v, vl)))
				rc = -ENOMEM;
		}
		while (rl.rados_omap_get_next2(cit, &k, &v, &kl, &vl) == 0 && k)
			if (kl != klens[1])
				n->children = true; /* a key under name/ other than itself */
	}
	rl.rados_omap_get_end(kit);
	rl.rados_omap_get_end(cit);
	rl.rados_release_read_op(op);
	if (rc < 0) {
		lnode_free(n);
		return rerr(rc, "cannot read label", name);
	}
	return 0;
}

static int rados_label_read(casfs_store *s, const char *name, char *buf, size_t size, size_t *len)
{
	struct lnode n;
	int rc = lnode_read(s, name, &n);
	if (rc < 0)
		return rc;
	if (!n.val) {
		rc = n.dval || n.children ? casfs__err(-EISDIR, "label '%s' is a directory of labels", name)
					  : -ENOENT;
	} else {
		struct lval l;
		lval_parse(n.val, &l);
		size_t hl = strlen(l.hex);
		if (hl + 1 > size) {
			rc = -EFBIG;
		} else {
			memcpy(buf, l.hex, hl + 1);
			*len = hl;
		}
	}
	lnode_free(&n);
	return rc;
}

/* Adds guards that no ancestor directory of name is a label. */
static void guard_ancestors(rados_write_op_t op, const char *name, char *scratch, int *prval)
{
	size_t n = strlen(name);
	memcpy(scratch, name, n + 1);
	for (size_t i = 0; i < n; i++) {
		if (scratch[i] != '/')
			continue;
		rl.rados_write_op_omap_cmp2(op, scratch, LIBRADOS_CMPXATTR_OP_EQ, "", i, 0, prval);
	}
}

/* After a guarded write failed: the reason, if it is not a lost race. */
static int why_cancelled(casfs_store *s, const char *name)
{

	char part[CASFS_LABEL_MAX + 2];
	size_t n = strlen(name);
	for (size_t i = 0; i < n; i++) {
		if (name[i] != '/')
			continue;
		memcpy(part, name, i);
		part[i] = '\0';
		const char *k = part;
		char *v = NULL;
		if (omap_get(S(s)->io, LOCK_OBJ, &k, 1, &v, NULL) == 0 && v) {
			free(v);
			return casfs__err(-ENOTDIR, "'%s' is a label, not a directory of labels", part);
		}
	}
	return -EAGAIN;
}

static int rados_label_write(casfs_store *s, const char *name, const char *hex, const char *cur,
			     const uint32_t *mode, const int64_t *mtime_ns)
{
	char scratch[CASFS_LABEL_MAX + 2], dkey[CASFS_LABEL_MAX + 2];
	snprintf(dkey, sizeof(dkey), "%s/", name);
	struct lnode n;
	int rc = lnode_read(s, name, &n);
	if (rc < 0)
		return rc;
	struct lval l;
	if (n.val)
		lval_parse(n.val, &l);
	if (n.dval || n.children) {
		lnode_free(&n);
		return casfs__err(-EISDIR, "label '%s' is a directory of labels", name);
	}
	if (strcmp(n.val ? l.hex : "", cur) != 0) {
		lnode_free(&n);
		return -EAGAIN;
	}
	/* A new version keeps the permission bits of the one it replaces. */
	struct lval nl;
	lval_new(&nl, hex, mode ? *mode & 07777 : n.val ? l.mode : 0644);
	if (mtime_ns)
		nl.mtime = *mtime_ns;
	if (n.val) {
		nl.uid = l.uid;
		nl.gid = l.gid;
	}
	char v[CASFS_HEX_MAX + 96];
	lval_format(&nl, v, sizeof(v));
	rados_write_op_t op = rl.rados_create_write_op();
	int prval = 0;
	rl.rados_write_op_omap_cmp2(op, name, LIBRADOS_CMPXATTR_OP_EQ, n.val ? n.val : "", strlen(name),
				 n.val ? strlen(n.val) : 0, &prval);
	rl.rados_write_op_omap_cmp2(op, dkey, LIBRADOS_CMPXATTR_OP_EQ, "", strlen(dkey), 0, &prval);
	guard_ancestors(op, name, scratch, &prval);
	char abuf[128];
	lock_assert(s, op, abuf, sizeof(abuf), &prval);
	const char *k = name, *vp = v;
	size_t kl = strlen(name), vl = strlen(v);
	rl.rados_write_op_omap_set2(op, &k, &vp, &kl, &vl, 1);
	rc = rl.rados_write_op_operate(op, S(s)->io, LOCK_OBJ, NULL, 0);
	rl.rados_release_write_op(op);
	lnode_free(&n);
	if (rc == -ECANCELED)
		return why_cancelled(s, name);
	int lost = lock_lost(s, rc);
	if (lost < 0)
		return lost;
	if (lost) {
		/* A gc may have come between: is the blob still there? */
		struct head h;
		int e = head_read(s, hex, &h);
		if (e == -ENOENT)
			return casfs__err(-ENOENT, "no blob %s in store '%s'", hex, s->id);
		return e < 0 ? e : -EAGAIN;
	}
	return rc < 0 ? rerr(rc, "cannot set label", name) : 0;
}

static int rados_label_delete(casfs_store *s, const char *name, const char *cur)
{
	struct lnode n;
	int rc = lnode_read(s, name, &n);
	if (rc < 0)
		return rc;
	if (!n.val) {
		rc = n.dval || n.children ? casfs__err(-EISDIR, "label '%s' is a directory of labels", name)
					  : -ENOENT;
		lnode_free(&n);
		return rc;
	}
	struct lval l;
	lval_parse(n.val, &l);
	if (cur[0] && strcmp(l.hex, cur) != 0) {
		lnode_free(&n);
		return -EAGAIN;
	}
	rados_write_op_t op = rl.rados_create_write_op();
	int prval = 0;
	size_t kl = strlen(name);
	rl.rados_write_op_omap_cmp2(op, name, LIBRADOS_CMPXATTR_OP_EQ, n.val, kl, strlen(n.val), &prval);
	char abuf[128];
	lock_assert(s, op, abuf, sizeof(abuf), &prval);
	rl.rados_write_op_omap_rm_keys2(op, &name, &kl, 1);
	rc = rl.rados_write_op_operate(op, S(s)->io, LOCK_OBJ, NULL, 0);
	rl.rados_release_write_op(op);
	lnode_free(&n);
	int lost = lock_lost(s, rc);
	if (lost)
		return lost < 0 ? lost : -EAGAIN;
	if (rc == -ECANCELED)
		return -EAGAIN;
	return rc < 0 ? rerr(rc, "cannot remove label", name) : 0;
}

/* Every key at or under a directory (its own "dir/" key included). */
struct subtree {
	char **keys, **vals;
	size_t *klens, *vlens;
	size_t n, cap;
};

static int collect_key(const char *key, size_t klen, const char *val, size_t vlen, void *ud,
		       char **skip)
{
	(void)skip;
	struct subtree *t = ud;
	if (t->n == t->cap) {
		size_t nc = t->cap ? t->cap * 2 : 16;
		char **k = realloc(t->keys, nc * sizeof(*k));
		if (k)
			t->keys = k;
		char **v = realloc(t->vals, nc * sizeof(*v));
		if (v)
			t->vals = v;
		size_t *kl = realloc(t->klens, nc * sizeof(*kl));
		if (kl)
			t->klens = kl;
		size_t *vl = realloc(t->vlens, nc * sizeof(*vl));
		if (vl)
			t->vlens = vl;
		if (!k || !v || !kl || !vl)
			return -ENOMEM;
		t->cap = nc;
	}
	t->keys[t->n] = strndup(key, klen);
	t->vals[t->n] = malloc(vlen + 1);
	if (!t->keys[t->n] || !t->vals[t->n]) {
		free(t->keys[t->n]);
		free(t->vals[t->n]);
		return -ENOMEM;
	}
	memcpy(t->vals[t->n], val, vlen);
	t->vals[t->n][vlen] = '\0';
	t->klens[t->n] = klen;
	t->vlens[t->n] = vlen;
	t->n++;
	return 0;
}

static void subtree_free(struct subtree *t)
{
	for (size_t i = 0; i < t->n; i++) {
		free(t->keys[i]);
		free(t->vals[i]);
	}
	free(t->keys);
	free(t->vals);
	free(t->klens);
	free(t->vlens);
}

static int rados_label_rename(casfs_store *s, const char *from, const char *to)
{
	char scratch[CASFS_LABEL_MAX + 2], tdkey[CASFS_LABEL_MAX + 2], fdkey[CASFS_LABEL_MAX + 2];
	snprintf(tdkey, sizeof(tdkey), "%s/", to);
	snprintf(fdkey, sizeof(fdkey), "%s/", from);
	size_t flen = strlen(from);
	if (!strncmp(to, fdkey, flen + 1))
		return casfs__err(-EINVAL, "cannot move '%s' into itself", from);
	for (int tries = 0; tries < 1000; tries++) {
		struct lnode f, t;
		int rc = lnode_read(s, from, &f);
		if (rc < 0)
			return rc;
		if ((rc = lnode_read(s, to, &t)) < 0) {
			lnode_free(&f);
			return rc;
		}
		bool fdir = !f.val && (f.dval || f.children);
		bool tdir = !t.val && (t.dval || t.children);
		struct subtree sub = { 0 };
		if (!f.val && !fdir)
			rc = -ENOENT;
		else if (!fdir && tdir)
			rc = casfs__err(-EISDIR, "label '%s' is a directory of labels", to);
		else if (fdir && t.val)
			rc = casfs__err(-ENOTDIR, "label '%s' is not a directory of labels", to);
		else if (fdir && t.children)
			rc = casfs__err(-ENOTEMPTY, "directory of labels '%s' is not empty", to);
		else if (fdir)
			rc = omap_walk(S(s)->io, LOCK_OBJ, fdkey, collect_key, &sub);
		if (rc < 0) {
			lnode_free(&f);
			lnode_free(&t);
			subtree_free(&sub);
			return rc;
		}
		rados_write_op_t op = rl.rados_create_write_op();
		int prval = 0;
		/* Both ends as we saw them... */
		rl.rados_write_op_omap_cmp2(op, from, LIBRADOS_CMPXATTR_OP_EQ, f.val ? f.val : "", flen,
					 f.val ? strlen(f.val) : 0, &prval);
		rl.rados_write_op_omap_cmp2(op, to, LIBRADOS_CMPXATTR_OP_EQ, t.val ? t.val : "", strlen(to),
					 t.val ? strlen(t.val) : 0, &prval);
		rl.rados_write_op_omap_cmp2(op, tdkey, LIBRADOS_CMPXATTR_OP_EQ, t.dval ? t.dval : "",
					 strlen(tdkey), t.dval ? strlen(t.dval) : 0, &prval);
		guard_ancestors(op, to, scratch, &prval);
		char abuf[128];
		lock_assert(s, op, abuf, sizeof(abuf), &prval);
		if (!fdir) {
			/* ...then the label moves. */
			const char *k = to, *v = f.val;
			size_t kl = strlen(to), vl = strlen(f.val);
			rl.rados_write_op_omap_rm_keys2(op, &from, &flen, 1);
			rl.rados_write_op_omap_set2(op, &k, &v, &kl, &vl, 1);
		} else {
			/* ...then every key under the directory moves. */
			char **nk = calloc(sub.n + 1, sizeof(*nk));
			size_t *nkl = calloc(sub.n + 1, sizeof(*nkl));
			for (size_t i = 0; nk && nkl && i < sub.n; i++) {
				rl.rados_write_op_omap_cmp2(op, sub.keys[i], LIBRADOS_CMPXATTR_OP_EQ, sub.vals[i],
							 sub.klens[i], sub.vlens[i], &prval);
				if (asprintf(&nk[i], "%s%s", tdkey, sub.keys[i] + flen + 1) < 0)
					nk[i] = NULL;
				nkl[i] = nk[i] ? strlen(nk[i]) : 0;
			}
			bool ok = nk && nkl;
			for (size_t i = 0; ok && i < sub.n; i++)
				ok = nk[i] != NULL;
			if (ok && t.dval) {
				/* The empty target directory is replaced. */
				const char *dk = tdkey;
				size_t dkl = strlen(tdkey);
				rl.rados_write_op_omap_rm_keys2(op, &dk, &dkl, 1);
			}
			if (ok && sub.n) {
				rl.rados_write_op_omap_rm_keys2(op, (const char *const *)sub.keys, sub.klens, sub.n);
				rl.rados_write_op_omap_set2(op, (const char *const *)nk, (const char *const *)sub.vals,
							 nkl, sub.vlens, sub.n);
			}
			for (size_t i = 0; nk && i < sub.n; i++)
				free(nk[i]);
			free(nk);
			free(nkl);
			if (!ok) {
				rl.rados_release_write_op(op);
				lnode_free(&f);
				lnode_free(&t);
				subtree_free(&sub);
				return casfs__err(-ENOMEM, "out of memory");
			}
			if (!sub.n) {
				/* An implicit empty directory cannot exist; nothing to move. */
			}
		}
		rc = rl.rados_write_op_operate(op, S(s)->io, LOCK_OBJ, NULL, 0);
		rl.rados_release_write_op(op);
		lnode_free(&f);
		lnode_free(&t);
		subtree_free(&sub);
		if (rc == -ECANCELED) {
			if ((rc = why_cancelled(s, to)) != -EAGAIN)
				return rc;
			continue; /* lost a race: look again */
		}
		int lost = lock_lost(s, rc);
		if (lost < 0)
			return lost;
		if (lost)
			continue; /* our lock ran out: held again, look again */
		return rc < 0 ? rerr(rc, "cannot rename label", from) : 0;
	}
	return casfs__err(-EBUSY, "label '%s' keeps changing under us: gave up", from);
}

static int list_label_key(const char *key, size_t klen, const char *val, size_t vlen, void *ud,
			  char **skip)
{
	(void)val, (void)vlen, (void)skip;
	struct list_ud *l = ud;
	if (klen && key[klen - 1] == '/')
		return 0; /* a made directory */
	int rc = l->fn(key, l->ud);
	return rc ? (rc == 1 ? -ECANCELED : rc) : 0;
}

static int rados_label_list(casfs_store *s, casfs_name_fn fn, void *ud)
{
	struct list_ud l = { fn, ud };
	int rc = omap_walk(S(s)->io, LOCK_OBJ, "", list_label_key, &l);
	if (rc == -ECANCELED)
		return 1;
	return rc < 0 ? rerr(rc, "cannot list labels of store", s->id) : rc;
}

static int rados_label_quarantine(casfs_store *s, const char *name)
{
	struct lnode n;
	int rc = lnode_read(s, name, &n);
	if (rc < 0)
		return rc;
	if (!n.val) {
		lnode_free(&n);
		return -ENOENT;
	}
	/* Kept in the quarantine object's omap, then removed if unchanged. */
	char key[CASFS_LABEL_MAX + 40], rnd[13];
	casfs__randhex(rnd, 12);
	snprintf(key, sizeof(key), "%s.%s", name, rnd);
	const char *k = key, *v = n.val;
	size_t kl = strlen(key), vl = strlen(n.val), nl = strlen(name);
	rados_write_op_t op = rl.rados_create_write_op();
	rl.rados_write_op_create(op, LIBRADOS_CREATE_IDEMPOTENT, NULL);
	rl.rados_write_op_omap_set2(op, &k, &v, &kl, &vl, 1);
	rc = rl.rados_write_op_operate(op, S(s)->io, "casfs.quarantine", NULL, 0);
	rl.rados_release_write_op(op);
	if (rc == 0) {
		int prval = 0;
		op = rl.rados_create_write_op();
		rl.rados_write_op_omap_cmp2(op, name, LIBRADOS_CMPXATTR_OP_EQ, n.val, nl, vl, &prval);
		rl.rados_write_op_omap_rm_keys2(op, &name, &nl, 1);
		rc = rl.rados_write_op_operate(op, S(s)->io, LOCK_OBJ, NULL, 0);
		rl.rados_release_write_op(op);
	}
	lnode_free(&n);
	return rc < 0 ? rerr(rc, "cannot move aside label", name) : 0;
}

static void fill_info(casfs_label_info *out, const struct lval *l, bool dir)
{
	memset(out, 0, sizeof(*out));
	out->is_dir = dir;
	out->mode = l->mode;
	out->mtime_ns = l->mtime;
	out->ctime_ns = l->ctime;
	out->uid = l->uid;
	out->gid = l->gid;
}

static int rados_label_stat(casfs_store *s, const char *name, casfs_label_info *out)
{
	struct lval l = { .mode = 0755 };
	if (!name[0]) {
		uint64_t size;
		time_t mt;
		int rc = rl.rados_stat(S(s)->io, LOCK_OBJ, &size, &mt);
		if (rc < 0)
			return rerr(rc, "cannot read labels of store", s->id);
		l.mtime = l.ctime = (int64_t)mt * 1000000000LL;
		fill_info(out, &l, true);
		return 0;
	}
	struct lnode n;
	int rc = lnode_read(s, name, &n);
	if (rc < 0)
		return rc;
	if (n.val) {
		lval_parse(n.val, &l);
		fill_info(out, &l, false);
	} else if (n.dval) {
		lval_parse(n.dval, &l);
		fill_info(out, &l, true);
	} else if (n.children) {
		/* Implicit (made by a label under it): the times of the last
		 * label change. */
		uint64_t size;
		time_t mt;
		if (rl.rados_stat(S(s)->io, LOCK_OBJ, &size, &mt) == 0)
			l.mtime = l.ctime = (int64_t)mt * 1000000000LL;
		fill_info(out, &l, true);
	} else {
		rc = -ENOENT;
	}
	lnode_free(&n);
	return rc;
}

static int rados_label_setattr(casfs_store *s, const char *name, const uint32_t *mode,
			       const int64_t *mtime_ns)
{
	char dkey[CASFS_LABEL_MAX + 2];
	snprintf(dkey, sizeof(dkey), "%s/", name);
	for (int tries = 0; tries < 1000; tries++) {
		struct lnode n;
		int rc = lnode_read(s, name, &n);
		if (rc < 0)
			return rc;
		struct lval l;
		const char *key = name, *old = n.val;
		if (n.val) {
			lval_parse(n.val, &l);
		} else if (n.dval || n.children) {
			/* An implicit directory becomes a made one to keep them. */
			key = dkey;
			old = n.dval;
			if (n.dval)
				lval_parse(n.dval, &l);
			else
				lval_new(&l, "d", 0755);
		} else {
			lnode_free(&n);
			return -ENOENT;
		}
		if (mode)
			l.mode = *mode & 07777;
		if (mtime_ns)
			l.mtime = *mtime_ns;
		l.ctime = casfs__now_ns();
		char v[CASFS_HEX_MAX + 96];
		lval_format(&l, v, sizeof(v));
		rados_write_op_t op = rl.rados_create_write_op();
		int prval = 0;
		size_t kl = strlen(key), vl = strlen(v);
		const char *vp = v;
		rl.rados_write_op_omap_cmp2(op, key, LIBRADOS_CMPXATTR_OP_EQ, old ? old : "", kl,
					 old ? strlen(old) : 0, &prval);
		char abuf[128];
		lock_assert(s, op, abuf, sizeof(abuf), &prval);
		rl.rados_write_op_omap_set2(op, &key, &vp, &kl, &vl, 1);
		rc = rl.rados_write_op_operate(op, S(s)->io, LOCK_OBJ, NULL, 0);
		rl.rados_release_write_op(op);
		lnode_free(&n);
		int lost = lock_lost(s, rc);
		if (lost < 0)
			return lost;
		if (rc != -ECANCELED && !lost)
			return rc < 0 ? rerr(rc, "cannot change label", name) : 0;
	}
	return casfs__err(-EBUSY, "label '%s' keeps changing under us: gave up", name);
}

static int label_mkdir_once(casfs_store *s, const char *name, uint32_t mode)
{
	char scratch[CASFS_LABEL_MAX + 2], dkey[CASFS_LABEL_MAX + 2];
	snprintf(dkey, sizeof(dkey), "%s/", name);
	struct lnode n;
	int rc = lnode_read(s, name, &n);
	if (rc < 0)
		return rc;
	bool exists = n.val || n.dval || n.children;
	lnode_free(&n);
	if (exists)
		return -EEXIST;
	struct lval l;
	lval_new(&l, "d", mode);
	char v[CASFS_HEX_MAX + 96];
	lval_format(&l, v, sizeof(v));
	rados_write_op_t op = rl.rados_create_write_op();
	int prval = 0;
	size_t kl = strlen(dkey), vl = strlen(v);
	const char *k = dkey, *vp = v;
	rl.rados_write_op_omap_cmp2(op, name, LIBRADOS_CMPXATTR_OP_EQ, "", strlen(name), 0, &prval);
	rl.rados_write_op_omap_cmp2(op, dkey, LIBRADOS_CMPXATTR_OP_EQ, "", kl, 0, &prval);
	guard_ancestors(op, name, scratch, &prval);
	char abuf[128];
	lock_assert(s, op, abuf, sizeof(abuf), &prval);
	rl.rados_write_op_omap_set2(op, &k, &vp, &kl, &vl, 1);
	rc = rl.rados_write_op_operate(op, S(s)->io, LOCK_OBJ, NULL, 0);
	rl.rados_release_write_op(op);
	if (rc == -ECANCELED)
		return why_cancelled(s, name); /* -EAGAIN: look again */
	int lost = lock_lost(s, rc);
	if (lost)
		return lost < 0 ? lost : -EAGAIN;
	return rc < 0 ? rerr(rc, "cannot make label directory", name) : 0;
}

static int label_rmdir_once(casfs_store *s, const char *name)
{
	char dkey[CASFS_LABEL_MAX + 2];
	snprintf(dkey, sizeof(dkey), "%s/", name);
	struct lnode n;
	int rc = lnode_read(s, name, &n);
	if (rc < 0)
		return rc;
	if (n.val)
		rc = -ENOTDIR;
	else if (n.children)
		rc = -ENOTEMPTY;
	else if (!n.dval)
		rc = -ENOENT;
	if (rc == 0) {
		rados_write_op_t op = rl.rados_create_write_op();
		int prval = 0;
		size_t kl = strlen(dkey);
		const char *k = dkey;
		rl.rados_write_op_omap_cmp2(op, dkey, LIBRADOS_CMPXATTR_OP_EQ, n.dval, kl, strlen(n.dval), &prval);
		char abuf[128];
		lock_assert(s, op, abuf, sizeof(abuf), &prval);
		rl.rados_write_op_omap_rm_keys2(op, &k, &kl, 1);
		rc = rl.rados_write_op_operate(op, S(s)->io, LOCK_OBJ, NULL, 0);
		rl.rados_release_write_op(op);
		int lost = lock_lost(s, rc);
		if (lost)
			rc = lost < 0 ? lost : -ECANCELED;
		if (rc == -ECANCELED) {
				rc = -EAGAIN; /* changed meanwhile, or gc: look again */
		}
		else if (rc < 0)
			rc = rerr(rc, "cannot remove label directory", name);
	}
	lnode_free(&n);
	return rc;
}

static int rados_label_mkdir(casfs_store *s, const char *name, uint32_t mode)
{
	for (int tries = 0; tries < 1000; tries++) {
		int rc = label_mkdir_once(s, name, mode);
		if (rc != -EAGAIN)
			return rc;
	}
	return casfs__err(-EBUSY, "label directory '%s' keeps changing under us: gave up", name);
}

static int rados_label_rmdir(casfs_store *s, const char *name)
{
	for (int tries = 0; tries < 1000; tries++) {
		int rc = label_rmdir_once(s, name);
		if (rc != -EAGAIN)
			return rc;
	}
	return casfs__err(-EBUSY, "label directory '%s' keeps changing under us: gave up", name);
}

struct rdir {
	size_t plen;
	casfs_dirent_fn fn;
	void *ud;
	int rc;
};

static int readdir_key(const char *key, size_t klen, const char *val, size_t vlen, void *ud,
		       char **skip)
{
	(void)val, (void)vlen;
	struct rdir *d = ud;
	const char *rest = key + d->plen;
	if (!*rest)
		return 0; /* the directory's own key */
	const char *slash = strchr(rest, '/');
	if (!slash)
		return (d->rc = d->fn(rest, 0, d->ud)) ? 1 : 0;
	/* A directory: named once, then the walk jumps past everything under
	 * it ('/' + 1 is '0'). */
	char *child = strndup(rest, (size_t)(slash - rest));
	if (!child)
		return -ENOMEM;
	d->rc = d->fn(child, 1, d->ud);
	free(child);
	if (d->rc)
		return 1;
	size_t n = (size_t)(slash - key);
	char *next = malloc(n + 2);
	if (!next)
		return -ENOMEM;
	memcpy(next, key, n);
	next[n] = '/';
	next[n + 1] = '\0';
	/* start_after is exclusive: after "x/" + the largest possible tail.
	 * Keys sort bytewise, so "x0" and on follow; use "x/\xff...". */
	char *after = malloc(n + 1 + CASFS_LABEL_MAX + 2);
	if (!after) {
		free(next);
		return -ENOMEM;
	}
	memcpy(after, next, n + 1);
	memset(after + n + 1, 0xff, CASFS_LABEL_MAX + 1);
	after[n + 1 + CASFS_LABEL_MAX + 1] = '\0';
	free(next);
	*skip = after;
	(void)klen;
	return 2;
}

static int rados_label_readdir(casfs_store *s, const char *dir, casfs_dirent_fn fn, void *ud)
{
	char prefix[CASFS_LABEL_MAX + 2] = "";
	if (dir[0]) {
		struct lnode n;
		int rc = lnode_read(s, dir, &n);
		if (rc < 0)
			return rc;
		bool isdir = !n.val && (n.dval || n.children);
		lnode_free(&n);
		if (!isdir)
			return -ENOENT;
		snprintf(prefix, sizeof(prefix), "%s/", dir);
	}
	struct rdir d = { strlen(prefix), fn, ud, 0 };
	int rc = omap_walk(S(s)->io, LOCK_OBJ, prefix, readdir_key, &d);
	if (rc < 0)
		return rerr(rc, "cannot list labels of store", s->id);
	return d.rc;
}

/* -------------------------------------------------------------- journal */

static int rados_journal_append(casfs_store *s, const char *line, size_t len, bool sync)
{
	(void)sync; /* acknowledged RADOS writes are on every replica */
	struct rstore *rs = S(s);
	pthread_mutex_lock(&rs->mu);
	unsigned seg = rs->jseg;
	bool check = rs->appends++ % 64 == 0; /* the first of a process, then every 64th */
	pthread_mutex_unlock(&rs->mu);
	char oid[64];
	snprintf(oid, sizeof(oid), "casfs.journal.%08u", seg);
	rados_write_op_t op = rl.rados_create_write_op();
	rl.rados_write_op_append(op, line, len);
	int rc = rl.rados_write_op_operate(op, rs->io, oid, NULL, 0);
	rl.rados_release_write_op(op);
	if (rc < 0)
		return rerr(rc, "cannot append to the journal of store", s->id);
	uint64_t size;
	time_t mt;
	if (check && rl.rados_stat(rs->io, oid, &size, &mt) == 0 && size >= JOURNAL_SEG) {
		/* On to the next segment, once, whoever sees it first. */
		char cur[16], next[16];
		snprintf(cur, sizeof(cur), "%u", seg);
		snprintf(next, sizeof(next), "%u", seg + 1);
		op = rl.rados_create_write_op();
		if (seg == 0)
			rl.rados_write_op_cmpxattr(op, "casfs.jseg", LIBRADOS_CMPXATTR_OP_EQ, "", 0);
		else
			rl.rados_write_op_cmpxattr(op, "casfs.jseg", LIBRADOS_CMPXATTR_OP_EQ, cur, strlen(cur));
		rl.rados_write_op_setxattr(op, "casfs.jseg", next, strlen(next));
		rl.rados_write_op_operate(op, rs->io, LOCK_OBJ, NULL, 0);
		rl.rados_release_write_op(op);
		char v[16] = "";
		int n = rl.rados_getxattr(rs->io, LOCK_OBJ, "casfs.jseg", v, sizeof(v) - 1);
		if (n > 0) {
			v[n] = '\0';
			pthread_mutex_lock(&rs->mu);
			rs->jseg = (unsigned)strtoul(v, NULL, 10);
			pthread_mutex_unlock(&rs->mu);
		}
	}
	return 0;
}

static int rados_journal_read(casfs_store *s, casfs_name_fn fn, void *ud)
{
	struct rstore *rs = S(s);
	char v[16] = "";
	unsigned last = 0;
	int n = rl.rados_getxattr(rs->io, LOCK_OBJ, "casfs.jseg", v, sizeof(v) - 1);
	if (n > 0) {
		v[n] = '\0';
		last = (unsigned)strtoul(v, NULL, 10);
	}
	int rc = 0;
	for (unsigned seg = 0; seg <= last && rc == 0; seg++) {
		char oid[64];
		snprintf(oid, sizeof(oid), "casfs.journal.%08u", seg);
		uint64_t size;
		time_t mt;
		if ((rc = rl.rados_stat(rs->io, oid, &size, &mt)) == -ENOENT) {
			rc = 0;
			continue;
		}
		if (rc < 0)
			return rerr(rc, "cannot read the journal of store", s->id);
		char *buf = malloc(size + 1);
		if (!buf)
			return casfs__err(-ENOMEM, "out of memory");
		int got = size ? rl.rados_read(rs->io, oid, buf, size, 0) : 0;
		if (got < 0) {
			free(buf);
			return rerr(got, "cannot read the journal of store", s->id);
		}
		buf[got] = '\0';
		char *p = buf;
		while (rc == 0 && *p) {
			char *nl = strchr(p, '\n');
			if (nl)
				*nl = '\0';
			if (*p)
				rc = fn(p, ud);
			if (!nl)
				break;
			p = nl + 1;
		}
		free(buf);
	}
	return rc;
}

const struct casfs_backend casfs__backend_rados = {
	.name = "rados",
	.root_open = rados_root_open,
	.root_close = rados_root_close,
	.root_local_dir = rados_root_local_dir,
	.store_create = rados_store_create,
	.store_remove = rados_store_remove,
	.store_list = rados_store_list,
	.store_open = rados_store_open,
	.store_close = rados_store_close,
	.stage_create = rados_stage_create,
	.stage_discard = rados_stage_discard,
	.stage_clean = rados_stage_clean,
	.session_begin = rados_session_begin,
	.session_end = rados_session_end,
	.stage_sync = rados_stage_sync,
	.blob_publish = rados_blob_publish,
	.publish_sync = rados_publish_sync,
	.blob_stat = rados_blob_stat,
	.blob_open = rados_blob_open,
	.blob_open_at = rados_blob_open_at,
	.blob_list = rados_blob_list,
	.blob_delete = rados_blob_delete,
	.blob_quarantine = rados_blob_quarantine,
	.lock = rados_store_lock,
	.unlock = rados_store_unlock,
	.label_read = rados_label_read,
	.label_write = rados_label_write,
	.label_delete = rados_label_delete,
	.label_rename = rados_label_rename,
	.label_list = rados_label_list,
	.label_quarantine = rados_label_quarantine,
	.label_stat = rados_label_stat,
	.label_setattr = rados_label_setattr,
	.label_mkdir = rados_label_mkdir,
	.label_rmdir = rados_label_rmdir,
	.label_readdir = rados_label_readdir,
	.journal_append = rados_journal_append,
	.journal_read = rados_journal_read,
};
