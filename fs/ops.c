/*
 * ops.c — FUSE request handlers: a thin translation from the kernel's
 * requests to libcasfs calls.
 *
 * Each handler looks at the kind of node it is asked about (see fsint.h)
 * and either serves it or refuses with the errno of SPEC §4:
 *   root      stores as directories; mkdir makes a store, rmdir removes one
 *   data/     read-only blobs (0444), served from their file descriptors
 *             with the kernel's page cache kept across opens
 *   labels/   symlinks to ../data/<hash>; ln -s / rm / mv / mkdir / rmdir
 *   incoming/ the same labels as files: writes are staged in a *version*
 *             shared by the handles on that name and committed (hashed,
 *             published, labelled) when the last handle is closed, before
 *             close(2) returns.
 */
#include "fsint.h"

#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/fsuid.h>
#include <sys/statvfs.h>
#include <unistd.h>

#define T_STATIC 86400.0 /* blobs and data/ never change */
#define T_LABEL 1.0      /* labels changed elsewhere show within a second */
#define XATTR_HASH "user.casfs.hash"
static const bool fs_share_truncate = false;

/* --------------------------------------------------------------- helpers */

/* Changes to the backing store are made with the caller's filesystem
 * identity (setfsuid/setfsgid are per thread), so files get the caller as
 * owner and the backing filesystem checks the caller's permissions: a user
 * cannot write into another user's store through the mount any more than
 * with the command.  Reads run as the daemon. */
static __thread uid_t cur_uid;
static __thread gid_t cur_gid;

void fs_identity_current(uid_t *uid, gid_t *gid)
{
	*uid = cur_uid;
	*gid = cur_gid;
}

void fs_identity(uid_t uid, gid_t gid)
{
	if (fs.uid != 0 || (uid == cur_uid && gid == cur_gid))
		return; /* a daemon that is not root cannot change identity */
	setfsgid(gid);
	setfsuid(uid);
	cur_uid = uid;
	cur_gid = gid;
}

static void set_caller(fuse_req_t req)
{
	const struct fuse_ctx *c = fuse_req_ctx(req);
	casfs_caller_set((long)c->uid, (long)c->pid);
	fs_identity(c->uid, c->gid);
}

/* For requests that only read. */
static void as_daemon(void)
{
	fs_identity(0, 0);
}

/* "parent/name", or "name" under the top; NULL if too long. */
static char *child_path(const char *parent, const char *name)
{
	char *p = NULL;
	if (!parent[0])
		p = strdup(name);
	else if (asprintf(&p, "%s/%s", parent, name) < 0)
		p = NULL;
	return p;
}

/* The label path of name inside the label directory node p; NULL if out
 * of memory. */
static char *child_of(struct node *p, const char *name)
{
	char *pn = node_name(p);
	char *path = pn ? child_path(pn, name) : NULL;
	free(pn);
	return path;
}

/* The symlink target of a label at path: one "../" per level. */
static char *link_target(const char *path, const char *hex)
{
	size_t depth = 1;
	for (const char *c = path; *c; c++)
		depth += *c == '/';
	char *t = malloc(depth * 3 + 6 + strlen(hex));
	if (!t)
		return NULL;
	char *p = t;
	for (size_t i = 0; i < depth; i++, p += 3)
		memcpy(p, "../", 3);
	sprintf(p, "data/%s", hex);
	return t;
}

/* Parses a symlink target made for path: "../"*depth + "data/<hex>". */
static int parse_target(const char *path, const char *target, char hex[CASFS_HEX_MAX])
{
	size_t depth = 1;
	for (const char *c = path; *c; c++)
		depth += *c == '/';
	const char *p = target;
	for (size_t i = 0; i < depth; i++, p += 3)
		if (strncmp(p, "../", 3) != 0)
			return -EINVAL;
	if (strncmp(p, "data/", 5) != 0)
		return -EINVAL;
	p += 5;
	if (strlen(p) >= CASFS_HEX_MAX)
		return -EINVAL;
	strcpy(hex, p);
	return 0;
}

/* Also before 1970: tv_nsec stays in [0, 1e9), as the kernel wants it. */
static void ns_to_ts(int64_t ns, struct timespec *ts)
{
	int64_t sec = ns / 1000000000LL, rem = ns % 1000000000LL;
	if (rem < 0) {
		sec--;
		rem += 1000000000LL;
	}
	ts->tv_sec = (time_t)sec;
	ts->tv_nsec = (long)rem;
}

static int64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static bool in_labels(enum kind k)
{
	return k == K_LDIR || k == K_LINK;
}

/* ------------------------------------------------------------- versions */

/*
 * A version is what is being written under one incoming/ name: a libcasfs
 * writer (staging file + running hash) shared by every handle that has it
 * open.  It is committed when its last handle is flushed, and freed when
 * its last handle is released.
 */
struct version {
	pthread_mutex_t mu;
	struct node *node;
	casfs_writer *w;
	char base[CASFS_HEX_MAX]; /* last committed digest ("" none) */
	uint64_t base_size;
	int base_fd;              /* base content, for reads while not staged */
	int handles;              /* open handles (under cur_mu) */
	int flushed;              /* of which closed, not yet released (cur_mu) */
	int refs;                 /* the handles together hold one; lookups take more */
	bool dirty;               /* changed since last commit */
	bool detached;            /* name unlinked: never commit */
	int err;                  /* a write failed: never commit, close reports it */
	bool commit_failed;       /* the last commit failed (and close said so) */
	bool set_mode, set_mtime;
	uint32_t mode;
	bool sxid_clear;          /* no set-ID bits to clear (when !set_mode) */
	bool created;             /* by CREATE: owner known before the commit */
	uid_t uid;                /* (the creator, who owns the label then) */
	gid_t gid;
	int64_t mtime_ns;         /* of the last change or of utimens */
};

/* Every open file and directory handle is on a list, so that those the
 * kernel never released (it drops pending releases at unmount) are freed
 * at teardown. */
struct tracked {
	struct tracked *prev, *next;
};

static struct tracked live_files = { &live_files, &live_files };
static struct tracked live_dirs = { &live_dirs, &live_dirs };
static pthread_mutex_t live_mu = PTHREAD_MUTEX_INITIALIZER;

static void track(struct tracked *list, struct tracked *t)
{
	pthread_mutex_lock(&live_mu);
	t->next = list->next;
	t->prev = list;
	list->next->prev = t;
	list->next = t;
	pthread_mutex_unlock(&live_mu);
}

static void untrack(struct tracked *t)
{
	pthread_mutex_lock(&live_mu);
	t->prev->next = t->next;
	t->next->prev = t->prev;
	pthread_mutex_unlock(&live_mu);
}

struct handle {
	struct tracked link; /* first: the list holds handles by it */
	struct version *v; /* NULL: a plain read of a blob or committed label */
	int fd;            /* for plain reads: holds blob bytes [start, start + len) */
	uint64_t start, len;
	uint64_t size;     /* the blob's */
	struct fstore *st; /* for plain reads of a remote blob: the chunk */
	char hex[CASFS_HEX_MAX]; /* in fd is changed under mu */
	pthread_mutex_t mu;
	bool writable;
	bool direct;       /* write-only: writes bypass the kernel's page cache */
	struct node *backing; /* the blob whose backing file the kernel reads */
	bool flushed;      /* closed by the program, release still to come */
	long opener;       /* process (tgid) that opened it, -1 if unknown */
#define OPENER_UNASKED (-2L)
	pid_t opener_tid;  /* the thread that opened it */
	uid_t uid;         /* who opened it: commits at release are made as them */
	gid_t gid;
};

static void drop_handle(struct fuse_file_info *fi);

/* The process (thread group) a request's thread belongs to; -1 if it cannot
 * be told.  FUSE gives the thread id of the caller. */
static long tgid_of(pid_t tid)
{
	char path[64], line[128];
	snprintf(path, sizeof(path), "/proc/%ld/status", (long)tid);
	FILE *f = fopen(path, "re");
	if (!f)
		return -1;
	long tgid = -1;
	while (fgets(line, sizeof(line), f))
		if (sscanf(line, "Tgid: %ld", &tgid) == 1)
			break;
	fclose(f);
	return tgid;
}

/* Guards node->cur and version->handles. */
static pthread_mutex_t cur_mu = PTHREAD_MUTEX_INITIALIZER;

static void version_free(struct version *v);

/* The version new handles of x would share, with a reference; NULL if
 * none.  Release it with version_put(). */
static struct version *cur_get(struct node *x)
{
	pthread_mutex_lock(&cur_mu);
	struct version *v = x->cur;
	if (v)
		v->refs++;
	pthread_mutex_unlock(&cur_mu);
	return v;
}

static void version_put(struct version *v)
{
	pthread_mutex_lock(&cur_mu);
	bool last = --v->refs == 0;
	pthread_mutex_unlock(&cur_mu);
	if (last)
		version_free(v);
}

/* The name of x is gone (rm, or mv over it): its version, if any, never
 * commits.  Unpins x.  Returns whether there was a version. */
static bool detach_version(struct node *x)
{
	pthread_mutex_lock(&cur_mu);
	struct version *v = x->cur;
	x->cur = NULL;
	if (v)
		v->refs++;
	pthread_mutex_unlock(&cur_mu);
	if (v) {
		pthread_mutex_lock(&v->mu);
		v->detached = true;
		pthread_mutex_unlock(&v->mu);
		version_put(v);
	}
	node_unpin(x);
	return v != NULL;
}

static bool staged(const struct version *v)
{
	return casfs_writer_fd(v->w) >= 0;
}

static uint64_t version_size(const struct version *v)
{
	return staged(v) ? casfs_writer_size(v->w) : v->base_size;
}

/* size: the blob's, if known (NULL: asked of the store). */
static void version_set_base(struct version *v, struct fstore *st, const char *hex,
			     const uint64_t *size)
{
	if (v->base_fd >= 0)
		close(v->base_fd);
	v->base_fd = -1;
	snprintf(v->base, sizeof(v->base), "%s", hex);
	v->base_size = 0;
	/* Its content is opened when first read (for a remote store that
	 * is a download: not at every commit). */
	if (hex[0] && size)
		v->base_size = *size;
	else if (hex[0])
		casfs_blob_size(st->s, hex, &v->base_size);
}

/* The base content's descriptor, opened on first use (v->mu held). */
static int version_base_fd(struct version *v)
{
	if (v->base_fd >= 0 || !v->base[0] || !v->base_size)
		return v->base_fd;
	struct fstore *st = v->node->st;
	int fd;
	if (casfs_blob_open(st->s, v->base, &fd) < 0)
		return -1;
	if (fstore_check_blob(st, v->base, fd) < 0) {
		close(fd); /* damaged: reads fail, a rewrite starts empty */
		return -1;
	}
	v->base_fd = fd;
	return fd;
}

/* A new version of node, starting from its committed content unless
 * truncate. */
static int version_new(struct node *x, bool truncate, struct version **out)
{
	struct version *v = calloc(1, sizeof(*v));
	if (!v)
		return -ENOMEM;
	pthread_mutex_init(&v->mu, NULL);
	v->node = x;
	v->base_fd = -1;
	v->mtime_ns = now_ns();
	char *name = node_name(x);
	char hex[CASFS_HEX_MAX] = "";
	int rc = name ? 0 : -ENOMEM;
	if (rc == 0 && !truncate) {
		rc = casfs_label_get(x->st->s, name, hex);
		if (rc == -ENOENT) {
			hex[0] = '\0';
			rc = 0;
		}
	}
	if (rc == 0)
		rc = hex[0] ? casfs_writer_open_from(&v->w, x->st->s, hex) : casfs_writer_open(&v->w, x->st->s);
	if (rc == 0) {
		version_set_base(v, x->st, hex, NULL);
		v->dirty = !hex[0]; /* a new or truncated file is a change */
		v->refs = 1;
		node_pin(x);
		*out = v;
	} else {
		pthread_mutex_destroy(&v->mu);
		free(v);
	}
	free(name);
	return rc;
}

static void version_free(struct version *v)
{
	casfs_writer_free(v->w);
	if (v->base_fd >= 0)
		close(v->base_fd);
	pthread_mutex_destroy(&v->mu);
	node_unpin(v->node);
	free(v);
}

/* Commits v under its node's current name (v->mu held). */
static int version_commit(struct version *v, bool force)
{
	if (v->err)
		return v->err; /* a failed write leaves the old version in place */
	if (v->detached || (!v->dirty && !force))
		return 0;
	struct node *x = v->node;
	char *name = node_name(x);
	if (!name)
		return -ENOMEM;
	char hex[CASFS_HEX_MAX];
	/* The label keeps the mode and mtime of the file as written. */
	uint32_t *mode = v->set_mode ? &v->mode : NULL;
	int64_t mt = v->mtime_ns;
	/* A staged writer stores what it staged: its size is known (an
	 * unstaged one stores its base again: asked of the store). */
	bool was_staged = staged(v);
	uint64_t size = was_staged ? casfs_writer_size(v->w) : 0;
	int rc = casfs_label_commit_attrs(x->st->s, name, v->w, NULL, hex, mode, &mt);
	v->commit_failed = rc < 0;
	if (rc < 0) {
		fs_log(LOG_WARNING, "commit of %s/incoming/%s failed: %s", x->st->id, name,
		       casfs_error_last());
		free(name);
		return rc;
	}
	v->dirty = false;
	version_set_base(v, x->st, hex, was_staged ? &size : NULL);
	free(name);
	return 0;
}

static struct version *handle_version(struct fuse_file_info *fi)
{
	struct handle *h = (struct handle *)(uintptr_t)fi->fh;
	return h ? h->v : NULL;
}

/* The kernel forgets the attributes it keeps of x (the mode changed
 * behind its back); safe in a handler: it takes no lock of the inode. */
static void inval_attrs(struct node *x)
{
	fuse_lowlevel_notify_inval_inode(fs.se, x->ino, -1, 0);
}

/* A write, truncation or truncating open by a process without CAP_FSETID
 * clears the set-user-ID bit, and set-group-ID if the group may execute,
 * as on a local filesystem; the kernel leaves that to us and says when
 * (FUSE_HANDLE_KILLPRIV_V2, see kio.c).  true if v's mode changed (v->mu
 * held). */
static bool version_kill_suidgid(struct version *v)
{
	if (!fs_request_kills_suidgid() || (!v->set_mode && v->sxid_clear))
		return false;
	uint32_t mode = v->mode;
	if (!v->set_mode) {
		/* The mode of the label it will replace, asked once. */
		casfs_label_info li;
		char *name = node_name(v->node);
		if (!name || casfs_label_stat(v->node->st->s, name, &li) < 0 || li.is_dir)
			li.mode = 0;
		free(name);
		mode = li.mode;
	}
	uint32_t kill = S_ISUID | ((mode & S_IXGRP) ? S_ISGID : 0);
	if (!(mode & kill)) {
		v->sxid_clear = true;
		return false;
	}
	v->set_mode = true;
	v->mode = mode & ~kill;
	return true;
}

/* ----------------------------------------------------------- attributes */

static void fill_dir(struct stat *st, fuse_ino_t ino, mode_t mode)
{
	static struct timespec started;
	memset(st, 0, sizeof(*st));
	if (!started.tv_sec)
		clock_gettime(CLOCK_REALTIME, &started);
	st->st_mtim = st->st_ctim = st->st_atim = started;
	st->st_ino = ino;
	st->st_mode = S_IFDIR | mode;
	st->st_nlink = 2;
	st->st_uid = fs.uid;
	st->st_gid = fs.gid;
}

static void fill_label_common(struct stat *st, struct node *x, const casfs_label_info *li)
{
	memset(st, 0, sizeof(*st));
	st->st_ino = x->ino;
	st->st_nlink = li->is_dir ? 2 : 1;
	st->st_uid = li->uid;
	st->st_gid = li->gid;
	ns_to_ts(li->mtime_ns, &st->st_mtim);
	ns_to_ts(li->ctime_ns, &st->st_ctim);
	st->st_atim = st->st_mtim;
}

static int node_stat_label(struct node *x, struct stat *st, struct version *v);

static int node_stat_kind(struct node *x, struct stat *st, double *timeout);

/* The largest request (max_write; FUSE_MAX_PAGES), and the preferred I/O
 * size (st_blksize) of files of that size or more: programs that size
 * their buffers by it, cat and cp among them, then move 1 MiB per system
 * call and request instead of 128 KiB.  Not for smaller files: cp and
 * cat allocate a buffer of that size for every file they copy, which
 * costs more than it saves on small ones (an mmap and munmap each). */
#define IO_SIZE (1 << 20)

static void prefer_io_size(struct stat *st)
{
	if (S_ISREG(st->st_mode) && st->st_size >= IO_SIZE)
		st->st_blksize = IO_SIZE;
}

/* Attributes of x, and how long the kernel may keep them. */
static int node_stat(struct node *x, struct stat *st, double *timeout)
{
	int rc = node_stat_kind(x, st, timeout);
	if (rc == 0)
		prefer_io_size(st);
	return rc;
}

static int node_stat_kind(struct node *x, struct stat *st, double *timeout)
{
	int rc = 0;
	*timeout = T_LABEL;
	switch (x->kind) {
	case K_ROOT: {
		/* The root's owner and mode decide who may add stores. */
		struct stat rs = { .st_mode = 0755, .st_uid = fs.uid, .st_gid = fs.gid };
		if (!fs.remote && stat(fs.root_path, &rs) < 0)
			return -errno;
		fill_dir(st, x->ino, rs.st_mode & (fs.read_only ? 07555 : 07777));
		st->st_uid = rs.st_uid;
		st->st_gid = rs.st_gid;
		return 0;
	}
	case K_STORE:
		fill_dir(st, x->ino, x->st->mode & (fs.read_only ? 07555 : 07777));
		st->st_uid = x->st->uid;
		st->st_gid = x->st->gid;
		return 0;
	case K_DATA:
		fill_dir(st, x->ino, 0555);
		st->st_uid = x->st->uid;
		st->st_gid = x->st->gid;
		*timeout = T_STATIC;
		return 0;
	case K_BLOB: {
		uint64_t size;
		int64_t mtime;
		if ((rc = casfs_blob_stat(x->st->s, x->name, &size, &mtime)) < 0)
			return rc;
		memset(st, 0, sizeof(*st));
		st->st_ino = x->ino;
		st->st_mode = S_IFREG | 0444;
		st->st_nlink = 1;
		st->st_size = (off_t)size;
		st->st_blocks = (blkcnt_t)((size + 511) / 512);
		st->st_uid = x->st->uid;
		st->st_gid = x->st->gid;
		ns_to_ts(mtime, &st->st_mtim);
		st->st_ctim = st->st_atim = st->st_mtim;
		*timeout = T_STATIC;
		return 0;
	}
	default:
		break;
	}
	/* Label kinds. */
	struct version *v = x->kind == K_IFILE ? cur_get(x) : NULL;
	rc = node_stat_label(x, st, v);
	if (v)
		version_put(v);
	return rc;
}

/* Attributes of a file of incoming/ whose label does not exist yet: all
 * from the version being written (its creator owns it, as it will own the
 * label). */
static void fill_uncommitted(struct node *x, struct version *v, struct stat *st)
{
	casfs_label_info li = { .mode = 0644, .uid = fs.uid, .gid = fs.gid };
	pthread_mutex_lock(&v->mu);
	if (v->created) {
		li.uid = v->uid;
		li.gid = v->gid;
	}
	if (v->set_mode)
		li.mode = v->mode;
	li.mtime_ns = li.ctime_ns = v->mtime_ns;
	uint64_t size = version_size(v);
	pthread_mutex_unlock(&v->mu);
	fill_label_common(st, x, &li);
	st->st_mode = S_IFREG | li.mode;
	st->st_size = (off_t)size;
	st->st_blocks = (blkcnt_t)((size + 511) / 512);
	prefer_io_size(st);
}

/* node_stat for labels; v is the version being written, if any. */
static int node_stat_label(struct node *x, struct stat *st, struct version *v)
{
	int rc;
	if (x->gone) {
		/* What it was when its name went away. */
		casfs_label_info li = { .mode = 0644, .uid = fs.uid, .gid = fs.gid };
		li.is_dir = x->kind == K_LDIR || x->kind == K_IDIR;
		li.mtime_ns = li.ctime_ns = now_ns();
		fill_label_common(st, x, &li);
		st->st_nlink = li.is_dir ? 2 : 0;
		uint64_t size = 0;
		if (li.is_dir) {
			st->st_mode = S_IFDIR | 0755;
		} else if (x->kind == K_LINK) {
			char *t = link_target(x->name, x->frozen);
			st->st_mode = S_IFLNK | 0777;
			size = t ? strlen(t) : 0;
			free(t);
		} else {
			st->st_mode = S_IFREG | 0644;
			if (v) {
				pthread_mutex_lock(&v->mu);
				size = version_size(v);
				pthread_mutex_unlock(&v->mu);
			} else if (x->frozen[0]) {
				casfs_blob_size(x->st->s, x->frozen, &size);
			}
		}
		st->st_size = (off_t)size;
		return 0;
	}
	char *name = node_name(x);
	if (!name)
		return -ENOMEM;
	casfs_label_info li;
	rc = casfs_label_stat(x->st->s, name, &li);
	free(name);
	if (rc == -ENOENT && v) {
		fill_uncommitted(x, v, st); /* created in incoming/, not yet committed */
		return 0;
	}
	if (rc < 0)
		return rc == -EINVAL || rc == -EFBIG ? -EIO : rc;
	bool want_dir = x->kind == K_LDIR || x->kind == K_IDIR;
	if (li.is_dir != want_dir)
		return -ENOENT; /* it changed kind: the kernel will look it up again */
	fill_label_common(st, x, &li);
	if (want_dir) {
		st->st_mode = S_IFDIR | li.mode;
		return 0;
	}
	if (x->kind == K_LINK) {
		char *name2 = node_name(x);
		char *t = name2 ? link_target(name2, li.digest) : NULL;
		st->st_mode = S_IFLNK | 0777;
		st->st_size = t ? (off_t)strlen(t) : 0;
		free(t);
		free(name2);
		return 0;
	}
	st->st_mode = S_IFREG | li.mode;
	uint64_t size = 0;
	if (v) {
		pthread_mutex_lock(&v->mu);
		size = version_size(v);
		if (v->dirty)
			ns_to_ts(v->mtime_ns, &st->st_mtim);
		if (v->set_mode)
			st->st_mode = S_IFREG | v->mode;
		pthread_mutex_unlock(&v->mu);
	} else if (li.digest[0]) {
		casfs_blob_size(x->st->s, li.digest, &size);
	}
	st->st_size = (off_t)size;
	st->st_blocks = (blkcnt_t)((size + 511) / 512);
	return 0;
}

static void reply_entry(fuse_req_t req, struct node *x)
{
	struct fuse_entry_param e;
	memset(&e, 0, sizeof(e));
	double t;
	int rc = node_stat(x, &e.attr, &t);
	if (rc < 0) {
		node_forget(x->ino, 1);
		fuse_reply_err(req, -rc);
		return;
	}
	e.ino = x->ino;
	e.attr_timeout = t;
	e.entry_timeout = t;
	if (fuse_reply_entry(req, &e) != 0)
		node_forget(x->ino, 1);
}

/* --------------------------------------------------------------- lookup */

static void op_lookup(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	as_daemon();
	struct node *p = node_get(parent), *x = NULL;
	if (!p) {
		fuse_reply_err(req, ENOENT);
		return;
	}
	struct fstore *st = NULL;
	int rc = 0;
	switch (p->kind) {
	case K_ROOT:
		if (casfs_id_check(name) < 0)
			break;
		if ((rc = fstore_get(name, &st)) == 0)
			x = node_lookup(K_STORE, st, "");
		break;
	case K_STORE:
		if (!strcmp(name, "data"))
			x = node_lookup(K_DATA, p->st, "");
		else if (!strcmp(name, "labels"))
			x = node_lookup(K_LDIR, p->st, "");
		else if (!strcmp(name, "incoming"))
			x = node_lookup(K_IDIR, p->st, "");
		break;
	case K_DATA:
		if (casfs_digest_check(casfs_store_algo(p->st->s), name) == 0 &&
		    casfs_blob_exists(p->st->s, name) == 1)
			x = node_lookup(K_BLOB, p->st, name);
		break;
	case K_LDIR:
	case K_IDIR: {
		if (casfs_label_check(name) < 0 && strlen(name) > 255) {
			rc = -ENAMETOOLONG;
			break;
		}
		char *path = child_of(p, name);
		if (!path) {
			rc = -ENOMEM;
			break;
		}
		if (casfs_label_check(path) < 0) {
			rc = strlen(path) > CASFS_LABEL_MAX ? -ENAMETOOLONG : -ENOENT;
			free(path);
			break;
		}
		casfs_label_info li;
		rc = casfs_label_stat(p->st->s, path, &li);
		enum kind k = p->kind == K_LDIR ? (li.is_dir ? K_LDIR : K_LINK) : (li.is_dir ? K_IDIR : K_IFILE);
		if (rc == 0) {
			x = node_lookup(k, p->st, path);
		} else if (rc == -ENOENT && p->kind == K_IDIR) {
			/* A file being created there, not yet committed. */
			struct node *f = node_lookup(K_IFILE, p->st, path);
			struct version *v = f ? cur_get(f) : NULL;
			if (v) {
				version_put(v);
				x = f;
				rc = 0;
			} else if (f) {
				node_forget(f->ino, 1);
			}
		} else if (rc == -EINVAL || rc == -EFBIG) {
			rc = -EIO; /* a damaged label file: an error for it alone */
		}
		free(path);
		break;
	}
	default:
		rc = -ENOTDIR;
	}
	if (x) {
		reply_entry(req, x);
		return;
	}
	if (rc == 0 || rc == -ENOENT) {
		/* Negative entries are not cached: a name may appear any time. */
		struct fuse_entry_param e;
		memset(&e, 0, sizeof(e));
		fuse_reply_entry(req, &e);
		return;
	}
	fuse_reply_err(req, -rc);
}

static void op_forget(fuse_req_t req, fuse_ino_t ino, uint64_t n)
{
	node_forget(ino, n);
	fuse_reply_none(req);
}

static void op_forget_multi(fuse_req_t req, size_t count, struct fuse_forget_data *f)
{
	for (size_t i = 0; i < count; i++)
		node_forget(f[i].ino, f[i].nlookup);
	fuse_reply_none(req);
}

static void op_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	as_daemon();
	(void)fi;
	struct node *x = node_get(ino);
	struct stat st;
	double t;
	int rc = x ? node_stat(x, &st, &t) : -ENOENT;
	if (rc < 0)
		fuse_reply_err(req, -rc);
	else
		fuse_reply_attr(req, &st, t);
}

/* -------------------------------------------------------- directories */

/* A directory's entries, packed: one buffer of NUL-terminated names.  Built
 * at opendir; immutable after, so open handles and the node's cache share
 * it by reference count. */
struct dirlist {
	char *names;           /* packed */
	size_t used, room;
	uint32_t *off;         /* of each name in names */
	unsigned char *isdir;
	size_t n, cap;
	int64_t stamp;         /* casfs_listing_stamp() before it was read */
	int refs;              /* dl_mu */
};

/* An open directory: which listing it reads. */
struct dirhandle {
	struct tracked link; /* first */
	struct dirlist *d;
};

/* Guards every node's kept listing and the listings' counts. */
static pthread_mutex_t dl_mu = PTHREAD_MUTEX_INITIALIZER;

static int dl_add(struct dirlist *d, const char *name, int isdir)
{
	size_t len = strlen(name) + 1;
	if (d->n == d->cap) {
		size_t cap = d->cap ? d->cap * 2 : 64;
		uint32_t *no = realloc(d->off, cap * sizeof(*no));
		if (!no)
			return -ENOMEM;
		d->off = no;
		unsigned char *nd = realloc(d->isdir, cap);
		if (!nd)
			return -ENOMEM;
		d->isdir = nd;
		d->cap = cap;
	}
	if (d->used + len > d->room) {
		size_t room = d->room ? d->room * 2 : 4096;
		while (room < d->used + len)
			room *= 2;
		if (room > UINT32_MAX)
			return -ENOMEM;
		char *nn = realloc(d->names, room);
		if (!nn)
			return -ENOMEM;
		d->names = nn;
		d->room = room;
	}
	memcpy(d->names + d->used, name, len);
	d->off[d->n] = (uint32_t)d->used;
	d->used += len;
	d->isdir[d->n++] = (unsigned char)isdir;
	return 0;
}

static int dl_add_dir(const char *name, void *ud)
{
	return dl_add(ud, name, 1);
}

static int dl_add_file(const char *name, void *ud)
{
	return dl_add(ud, name, 0);
}

static int dl_add_entry(const char *name, int isdir, void *ud)
{
	return dl_add(ud, name, isdir);
}

static void dl_put(struct dirlist *d)
{
	if (!d)
		return;
	pthread_mutex_lock(&dl_mu);
	bool last = --d->refs == 0;
	pthread_mutex_unlock(&dl_mu);
	if (last) {
		free(d->names);
		free(d->off);
		free(d->isdir);
		free(d);
	}
}

void node_drop_listing(struct node *x)
{
	pthread_mutex_lock(&dl_mu);
	struct dirlist *d = x->listing;
	x->listing = NULL;
	pthread_mutex_unlock(&dl_mu);
	dl_put(d);
}

/* Reads the entries of directory node x into a new listing. */
static int dl_build(struct node *x, struct dirlist **out)
{
	struct dirlist *d = calloc(1, sizeof(*d));
	if (!d)
		return -ENOMEM;
	d->refs = 1;
	int rc = dl_add(d, ".", 1);
	if (rc == 0)
		rc = dl_add(d, "..", 1);
	if (rc == 0) {
		switch (x->kind) {
		case K_ROOT:
			rc = casfs_store_list(fs.root, dl_add_dir, d);
			break;
		case K_STORE:
			if ((rc = dl_add(d, "data", 1)) == 0 && (rc = dl_add(d, "labels", 1)) == 0)
				rc = dl_add(d, "incoming", 1);
			break;
		case K_DATA:
			rc = casfs_blob_list(x->st->s, dl_add_file, d);
			break;
		case K_LDIR:
		case K_IDIR: {
			char *name = node_name(x);
			rc = name ? casfs_label_readdir(x->st->s, name, dl_add_entry, d) : -ENOMEM;
			free(name);
			break;
		}
		default:
			rc = -ENOTDIR;
		}
	}
	if (rc < 0) {
		dl_put(d);
		return rc;
	}
	*out = d;
	return 0;
}

/* A listing older than this is kept: a change after it was read gets a
 * later timestamp even where timestamps are coarse (the "racy" case of
 * git's index, the same cure). */
#define DL_SETTLED_NS 2000000000LL

/* The listing of directory node x: the one kept on the node while the
 * backing directory's stamp is unchanged (a listing of 100,000 labels reads
 * 100,000 files; data/ and labels/ of a local root only), else a fresh
 * one, kept if the directory has been still for a while. */
static int dl_get(struct node *x, struct dirlist **out)
{
	int64_t stamp = 0;
	bool keep = false;
	if (!fs.remote && (x->kind == K_DATA || x->kind == K_LDIR || x->kind == K_IDIR)) {
		char *name = x->kind == K_DATA ? NULL : node_name(x);
		keep = (x->kind == K_DATA || name) &&
		       casfs_listing_stamp(x->st->s, name, &stamp) == 0;
		free(name);
	}
	if (keep) {
		pthread_mutex_lock(&dl_mu);
		struct dirlist *d = x->listing;
		bool current = d && d->stamp == stamp;
		if (current) {
			d->refs++;
			*out = d;
		}
		pthread_mutex_unlock(&dl_mu);
		if (current)
			return 0;
	}
	struct dirlist *d;
	int rc = dl_build(x, &d);
	if (rc < 0)
		return rc;
	d->stamp = stamp;
	if (keep && stamp < now_ns() - DL_SETTLED_NS) {
		pthread_mutex_lock(&dl_mu);
		struct dirlist *old = x->listing;
		x->listing = d;
		d->refs++;
		pthread_mutex_unlock(&dl_mu);
		dl_put(old);
	}
	*out = d;
	return 0;
}

static void op_opendir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	as_daemon();
	struct node *x = node_get(ino);
	struct dirhandle *h = calloc(1, sizeof(*h));
	int rc = x && h ? dl_get(x, &h->d) : (h ? -ENOENT : -ENOMEM);
	if (rc < 0) {
		free(h);
		fuse_reply_err(req, -rc);
		return;
	}
	track(&live_dirs, &h->link);
	fi->fh = (uint64_t)(uintptr_t)h;
	fi->cache_readdir = 0;
	fuse_reply_open(req, fi);
}

static void op_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
		       struct fuse_file_info *fi)
{
	struct dirlist *d = ((struct dirhandle *)(uintptr_t)fi->fh)->d;
	struct node *x = node_get(ino);
	char *buf = malloc(size);
	if (!buf) {
		fuse_reply_err(req, ENOMEM);
		return;
	}
	bool link = x && x->kind == K_LDIR;
	size_t used = 0;
	for (size_t i = (size_t)off; i < d->n; i++) {
		struct stat st;
		memset(&st, 0, sizeof(st));
		st.st_ino = 0xffffffff; /* unknown: the kernel looks it up */
		st.st_mode = d->isdir[i] ? S_IFDIR : (link ? S_IFLNK : S_IFREG);
		size_t n = fuse_add_direntry(req, buf + used, size - used, d->names + d->off[i], &st,
					     (off_t)(i + 1));
		if (n > size - used)
			break;
		used += n;
	}
	fuse_reply_buf(req, buf, used);
	free(buf);
}

static void dirhandle_free(struct dirhandle *h)
{
	untrack(&h->link);
	dl_put(h->d);
	free(h);
}

static void op_releasedir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	(void)ino;
	dirhandle_free((struct dirhandle *)(uintptr_t)fi->fh);
	fuse_reply_err(req, 0);
}

static void op_mkdir(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode)
{
	set_caller(req);
	struct node *p = node_get(parent);
	if (!p) {
		fuse_reply_err(req, ENOENT);
		return;
	}
	int rc;
	if (p->kind == K_ROOT) {
		rc = casfs_store_create(fs.root, name, fs.new_algo, NULL, 0);
		struct fstore *st;
		if (rc == 0 && (rc = fstore_get(name, &st)) == 0) {
			reply_entry(req, node_lookup(K_STORE, st, ""));
			return;
		}
		if (rc == -EINVAL && strlen(name) > CASFS_ID_MAX)
			rc = -ENAMETOOLONG;
	} else if (p->kind == K_LDIR || p->kind == K_IDIR) {
		char *path = child_of(p, name);
		rc = path ? casfs_label_mkdir(p->st->s, path, mode & 07777) : -ENOMEM;
		if (rc == 0) {
			struct node *x = node_lookup(p->kind, p->st, path);
			free(path);
			reply_entry(req, x);
			return;
		}
		free(path);
	} else if (p->kind == K_STORE || p->kind == K_DATA) {
		rc = -EACCES;
	} else {
		rc = -ENOTDIR;
	}
	fuse_reply_err(req, -rc);
}

static void op_rmdir(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	set_caller(req);
	struct node *p = node_get(parent);
	int rc;
	if (!p) {
		rc = -ENOENT;
	} else if (p->kind == K_ROOT) {
		rc = casfs_store_remove(fs.root, name);
		if (rc == 0)
			fstore_mark_dead(name);
	} else if (p->kind == K_LDIR || p->kind == K_IDIR) {
		char *path = child_of(p, name);
		rc = path ? casfs_label_rmdir(p->st->s, path) : -ENOMEM;
		free(path);
	} else {
		rc = -EPERM; /* data, labels, incoming are fixed */
	}
	fuse_reply_err(req, -rc);
}

/* --------------------------------------------------------------- labels */

static void op_readlink(fuse_req_t req, fuse_ino_t ino)
{
	as_daemon();
	struct node *x = node_get(ino);
	if (!x || x->kind != K_LINK) {
		fuse_reply_err(req, x ? EINVAL : ENOENT);
		return;
	}
	char *name = node_name(x);
	char hex[CASFS_HEX_MAX];
	int rc = !name ? -ENOMEM : x->gone ? (snprintf(hex, sizeof(hex), "%s", x->frozen), hex[0] ? 0 : -ENOENT)
			     : casfs_label_get(x->st->s, name, hex);
	char *t = rc == 0 ? link_target(name, hex) : NULL;
	free(name);
	if (rc < 0)
		fuse_reply_err(req, rc == -EINVAL ? EIO : -rc);
	else if (!t)
		fuse_reply_err(req, ENOMEM);
	else
		fuse_reply_readlink(req, t);
	free(t);
}

static void op_symlink(fuse_req_t req, const char *target, fuse_ino_t parent, const char *name)
{
	set_caller(req);
	struct node *p = node_get(parent);
	int rc;
	char *path = NULL;
	if (!p) {
		rc = -ENOENT;
	} else if (p->kind != K_LDIR) {
		/* Symlinks exist only as labels. */
		rc = p->kind == K_IDIR || p->kind == K_DATA || p->kind == K_STORE ? -EPERM : -ENOTDIR;
	} else {
		path = child_of(p, name);
		char hex[CASFS_HEX_MAX];
		rc = path ? parse_target(path, target, hex) : -ENOMEM;
		if (rc == 0)
			rc = casfs_label_set(p->st->s, path, hex, "", NULL);
		if (rc == -EISDIR)
			rc = -EEXIST;
		if (rc == 0) {
			struct node *x = node_lookup(K_LINK, p->st, path);
			free(path);
			reply_entry(req, x);
			return;
		}
	}
	free(path);
	fuse_reply_err(req, -rc);
}

static void op_unlink(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	set_caller(req);
	struct node *p = node_get(parent);
	int rc;
	if (!p) {
		rc = -ENOENT;
	} else if (p->kind == K_LDIR || p->kind == K_IDIR) {
		char *path = child_of(p, name);
		char old[CASFS_HEX_MAX] = "";
		rc = path ? casfs_label_remove(p->st->s, path, NULL, old) : -ENOMEM;
		if (path && (rc == 0 || rc == -ENOENT)) {
			/* Open descriptors keep what they had, as with an
			 * unlinked inode; writers on it write into the void. */
			struct node *x = node_gone(p->st, p->kind == K_IDIR, path, old);
			if (x && detach_version(x) && rc == -ENOENT)
				rc = 0; /* a file created and not yet committed */
		}
		free(path);
	} else if (p->kind == K_DATA) {
		rc = -EPERM;
	} else {
		rc = -EPERM;
	}
	fuse_reply_err(req, -rc);
}

static void op_rename(fuse_req_t req, fuse_ino_t parent, const char *name, fuse_ino_t newparent,
		      const char *newname, unsigned int flags)
{
	set_caller(req);
	struct node *p = node_get(parent), *q = node_get(newparent);
	int rc = 0;
	char *from = NULL, *to = NULL;
	if (!p || !q) {
		rc = -ENOENT;
	} else if (p->kind == K_DATA || q->kind == K_DATA || p->kind == K_ROOT || q->kind == K_ROOT ||
		   p->kind == K_STORE || q->kind == K_STORE) {
		rc = -EPERM;
	} else if (p->st != q->st || in_labels(p->kind) != in_labels(q->kind)) {
		rc = -EXDEV; /* another store, or labels/ <-> incoming/ */
	} else if (flags & RENAME_EXCHANGE) {
		rc = -EINVAL;
	} else {
		from = child_of(p, name);
		to = child_of(q, newname);
		if (!from || !to)
			rc = -ENOMEM;
		casfs_label_info li;
		if (rc == 0 && (flags & RENAME_NOREPLACE) && casfs_label_stat(p->st->s, to, &li) == 0)
			rc = -EEXIST;
		char old[CASFS_HEX_MAX] = "";
		if (rc == 0 && casfs_label_get(p->st->s, to, old) < 0)
			old[0] = '\0';
		if (rc == 0)
			rc = casfs_label_rename(p->st->s, from, to);
		if (rc == 0) {
			struct node *x = node_renamed(p->st, p->kind == K_IDIR, from, to, old);
			if (x)
				detach_version(x);
		}
	}
	free(from);
	free(to);
	fuse_reply_err(req, -rc);
}

static void op_link(fuse_req_t req, fuse_ino_t ino, fuse_ino_t newparent, const char *newname)
{
	set_caller(req);
	struct node *x = node_get(ino), *q = node_get(newparent);
	int rc;
	char *to = NULL;
	if (!x || !q) {
		rc = -ENOENT;
	} else if (x->kind != K_LINK && x->kind != K_IFILE && x->kind != K_BLOB) {
		rc = -EPERM;
	} else if (x->gone) {
		rc = -ENOENT;
	} else if (q->kind != K_LDIR && q->kind != K_IDIR) {
		rc = -EPERM;
	} else if ((q->kind == K_LDIR) != (x->kind == K_LINK)) {
		/* A hard link keeps the file type: symlinks link within
		 * labels/, regular files (blobs, incoming/) into incoming/. */
		rc = -EXDEV;
	} else if (q->st != x->st) {
		rc = -EXDEV;
	} else {
		/* A hard link is a second label on the same digest. */
		char hex[CASFS_HEX_MAX];
		char *xn = node_name(x);
		to = child_of(q, newname);
		if (x->kind == K_BLOB)
			rc = xn ? (snprintf(hex, sizeof(hex), "%s", xn), 0) : -ENOMEM;
		else
			rc = xn ? casfs_label_get(x->st->s, xn, hex) : -ENOMEM;
		free(xn);
		if (rc == 0)
			rc = to ? casfs_label_set(x->st->s, to, hex, "", NULL) : -ENOMEM;
		if (rc == 0) {
			struct node *n = node_lookup(q->kind == K_LDIR ? K_LINK : K_IFILE, q->st, to);
			free(to);
			reply_entry(req, n);
			return;
		}
	}
	free(to);
	fuse_reply_err(req, -rc);
}

/* ------------------------------------------------------ opening files */

static int open_plain(struct fstore *st, const char *hex, struct fuse_file_info *fi)
{
	struct handle *h = calloc(1, sizeof(*h));
	if (!h)
		return -ENOMEM;
	h->fd = -1;
	/* A local blob comes whole; a remote one a chunk at a time (only
	 * what is read is fetched). */
	int rc = casfs_blob_size(st->s, hex, &h->size);
	if (rc == 0 && h->size > 0) {
		rc = casfs_blob_open_at(st->s, hex, 0, &h->fd, &h->start, &h->len);
		if (rc == 0 && h->start + h->len == h->size && (rc = fstore_check_blob(st, hex, h->fd)) < 0)
			close(h->fd);
	}
	if (rc < 0) {
		free(h);
		return rc;
	}
	h->st = st;
	fstore_ref(st);
	strcpy(h->hex, hex);
	pthread_mutex_init(&h->mu, NULL);
	track(&live_files, &h->link);
	fi->fh = (uint64_t)(uintptr_t)h;
	return 0;
}

/* Reads [off, off + size) of a blob that is not local as a whole, moving
 * the handle's fd from chunk to chunk. */
static void read_chunked(fuse_req_t req, struct handle *h, size_t size, off_t off)
{
	if ((uint64_t)off >= h->size) {
		fuse_reply_buf(req, NULL, 0);
		return;
	}
	if (size > h->size - (uint64_t)off)
		size = (size_t)(h->size - (uint64_t)off);
	char *buf = malloc(size ? size : 1);
	if (!buf) {
		fuse_reply_err(req, ENOMEM);
		return;
	}
	size_t done = 0;
	int rc = 0;
	pthread_mutex_lock(&h->mu);
	while (done < size) {
		uint64_t at = (uint64_t)off + done;
		if (h->fd < 0 || at < h->start || at >= h->start + h->len) {
			int fd;
			uint64_t start, len;
			if ((rc = casfs_blob_open_at(h->st->s, h->hex, at, &fd, &start, &len)) < 0)
				break;
			if (h->fd >= 0)
				close(h->fd);
			h->fd = fd;
			h->start = start;
			h->len = len;
		}
		size_t want = size - done;
		if (want > h->start + h->len - at)
			want = (size_t)(h->start + h->len - at);
		ssize_t n = pread(h->fd, buf + done, want, (off_t)(at - h->start));
		if (n <= 0) {
			rc = n < 0 ? -errno : -EIO;
			break;
		}
		done += (size_t)n;
	}
	pthread_mutex_unlock(&h->mu);
	if (rc < 0)
		fuse_reply_err(req, rc == -ENXIO ? EIO : -rc);
	else
		fuse_reply_buf(req, buf, done);
	free(buf);
}

/* Opens incoming/<name> for writing (or reading while others write). */
static int open_version(fuse_req_t req, struct node *x, int flags, struct fuse_file_info *fi)
{
	bool writable = (flags & O_ACCMODE) != O_RDONLY;
	bool trunc = writable && (flags & O_TRUNC);
	bool killed = false;
	struct handle *h = calloc(1, sizeof(*h));
	if (!h)
		return -ENOMEM;
	h->fd = -1;
	h->writable = writable;
	h->opener_tid = fuse_req_ctx(req)->pid;
	h->opener = OPENER_UNASKED; /* asked only if another thread flushes */
	h->uid = fuse_req_ctx(req)->uid;
	h->gid = fuse_req_ctx(req)->gid;
	int rc = 0;
	pthread_mutex_lock(&cur_mu);
	struct version *v = x->cur;
	/* A truncating open while another writer is mid-version starts a
	 * version of its own, so each writer leaves one complete version
	 * and the last to close wins; other opens share the current one. */
	if (v && trunc && v->handles > 0 && !fs_share_truncate)
		v = NULL;
	if (v)
		v->handles++;
	pthread_mutex_unlock(&cur_mu);
	if (v && trunc) {
		pthread_mutex_lock(&v->mu);
		rc = casfs_writer_truncate(v->w, 0);
		killed = version_kill_suidgid(v);
		v->dirty = true;
		v->mtime_ns = now_ns();
		pthread_mutex_unlock(&v->mu);
	}
	if (!v) {
		if ((rc = version_new(x, trunc, &v)) < 0) {
			free(h);
			return rc;
		}
		pthread_mutex_lock(&cur_mu);
		v->handles = 1;
		x->cur = v; /* an older one lives on with its own handles */
		pthread_mutex_unlock(&cur_mu);
		if (trunc) {
			pthread_mutex_lock(&v->mu);
			killed = version_kill_suidgid(v);
			pthread_mutex_unlock(&v->mu);
		}
	}
	h->v = v;
	track(&live_files, &h->link);
	fi->fh = (uint64_t)(uintptr_t)h;
	fi->keep_cache = 0;
	/* Write-only handles (cp, shell redirections, tar, rsync) write
	 * straight through: no copy into the kernel's page cache, and none
	 * of the kernel's security.capability lookups (file_remove_privs)
	 * that a cached write makes, once per inode even with SB_NOSEC: a
	 * round trip per small file.  The kernel flags the writes of a
	 * process without CAP_FSETID instead (kio.c).  A handle that can
	 * read stays cached, for mmap(2). */
	fi->direct_io = h->direct = (flags & O_ACCMODE) == O_WRONLY;
	if (killed)
		inval_attrs(x);
	return rc;
}

/* FUSE passthrough of a blob of a directory root (kio.c): the kernel
 * reads its file under the root.  Its id, or 0.  The kernel keeps one
 * backing file per inode, so the opens of a blob share one id, closed
 * when the last of them is released (backing_put()).  The inode must not
 * mix passthrough and cached opens (the kernel fails such an open with
 * EIO): a blob that cannot pass through is read uncached. */
static pthread_mutex_t backing_mu = PTHREAD_MUTEX_INITIALIZER;

static int blob_backing(struct node *x, struct fuse_file_info *fi)
{
	struct handle *h = (struct handle *)(uintptr_t)fi->fh;
	/* Only blobs of a directory root: a rados: root's local copy of a
	 * blob may be whole at one open and in chunks at another. */
	if (!fs_passthrough || fs.remote || h->fd < 0 || h->start != 0 || h->len != h->size)
		return 0;
	pthread_mutex_lock(&backing_mu);
	int id = x->backing > 0 ? x->backing : fs_backing_open(h->fd);
	if (id > 0) {
		x->backing = id;
		x->backing_refs++;
		h->backing = x;
		node_pin(x); /* a FORGET may come before the RELEASE */
	}
	pthread_mutex_unlock(&backing_mu);
	if (id > 0) {
		fi->keep_cache = 0;
		return id;
	}
	static bool said;
	if (!__atomic_exchange_n(&said, true, __ATOMIC_RELAXED))
		fs_log(LOG_WARNING, "a blob cannot be read through its backing file (%s): read through the daemon",
		       strerror(-id));
	fi->keep_cache = 0;
	fi->direct_io = 1;
	return 0;
}

/* kernel: the FUSE connection is still there to be told. */
static void backing_put(struct handle *h, bool kernel)
{
	struct node *x = h->backing;
	if (!x)
		return;
	pthread_mutex_lock(&backing_mu);
	if (--x->backing_refs == 0) {
		if (kernel)
			fs_backing_close(x->backing);
		x->backing = 0;
	}
	pthread_mutex_unlock(&backing_mu);
	node_unpin(x);
	h->backing = NULL;
}

static void op_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	int backing = 0;
	set_caller(req);
	struct node *x = node_get(ino);
	struct version *v_active = NULL;
	int rc;
	bool writable = (fi->flags & O_ACCMODE) != O_RDONLY || (fi->flags & O_TRUNC);
	if (!x) {
		rc = -ENOENT;
	} else if (x->kind == K_BLOB) {
		if (writable) {
			rc = -EACCES;
		} else if ((rc = open_plain(x->st, x->name, fi)) == 0) {
			fi->keep_cache = 1; /* immutable: keep the page cache */
			fi->noflush = 1;
			backing = blob_backing(x, fi);
		}
	} else if (x->kind == K_IFILE && x->gone) {
		/* Opened through a name that has just gone: what it held. */
		rc = writable || !x->frozen[0] ? -ENOENT : open_plain(x->st, x->frozen, fi);
	} else if (x->kind == K_IFILE) {
		if (writable && fs.read_only) {
			rc = -EROFS;
		} else if (writable) {
			rc = open_version(req, x, fi->flags, fi);
		} else {
			/* A reader sees the committed version, a snapshot that a
			 * later commit does not change: never a half-written
			 * one.  A file created and not yet committed reads as
			 * empty. */
			char *name = node_name(x);
			char hex[CASFS_HEX_MAX];
			rc = name ? casfs_label_get(x->st->s, name, hex) : -ENOMEM;
			free(name);
			if (rc == 0) {
				rc = open_plain(x->st, hex, fi);
				/* The kernel's page cache of this inode is the
				 * writers': read past it, from the snapshot. */
				fi->direct_io = 1;
			} else if (rc == -ENOENT && (v_active = cur_get(x)) != NULL) {
				fi->direct_io = 1;
				version_put(v_active);
				struct handle *h = calloc(1, sizeof(*h));
				rc = h ? 0 : -ENOMEM;
				if (h) {
					h->fd = -1;
					track(&live_files, &h->link);
					fi->fh = (uint64_t)(uintptr_t)h;
				}
			}
		}
	} else {
		rc = -EISDIR;
	}
	if (rc < 0) {
		fuse_reply_err(req, -rc);
	} else {
		if (backing > 0)
			fs_reply_backing(backing); /* closed at release */
		if (fuse_reply_open(req, fi) != 0)
			drop_handle(fi); /* interrupted: the kernel will not release it */
	}
}

static void op_create(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode,
		      struct fuse_file_info *fi)
{
	set_caller(req);
	struct node *p = node_get(parent);
	int rc;
	if (!p) {
		rc = -ENOENT;
	} else if (p->kind == K_IDIR) {
		char *path = child_of(p, name);
		rc = path ? casfs_label_check(path) : -ENOMEM;
		if (rc == -EINVAL && strlen(name) > 255)
			rc = -ENAMETOOLONG;
		struct node *x = rc == 0 ? node_lookup(K_IFILE, p->st, path) : NULL;
		free(path);
		if (rc == 0 && !x)
			rc = -ENOMEM;
		if (rc == 0) {
			rc = open_version(req, x, fi->flags | O_TRUNC, fi);
			if (rc == 0) {
				/* The kernel looked the name up just before (it
				 * always does for O_CREAT on a name it does not
				 * know), so the attributes are the new file's:
				 * no need to ask the store again. */
				const struct fuse_ctx *c = fuse_req_ctx(req);
				struct version *v = handle_version(fi);
				pthread_mutex_lock(&v->mu);
				v->set_mode = true;
				v->mode = mode & 07777;
				v->created = true;
				/* Whom the label will belong to (fs_identity). */
				v->uid = fs.uid == 0 ? c->uid : fs.uid;
				v->gid = fs.uid == 0 ? c->gid : fs.gid;
				pthread_mutex_unlock(&v->mu);
				struct fuse_entry_param e;
				memset(&e, 0, sizeof(e));
				fill_uncommitted(x, v, &e.attr);
				e.ino = x->ino;
				e.attr_timeout = e.entry_timeout = T_LABEL;
				if (fuse_reply_create(req, &e, fi) != 0) {
					drop_handle(fi);
					node_forget(x->ino, 1);
				}
				return;
			}
			node_forget(x->ino, 1);
		}
	} else if (p->kind == K_LDIR) {
		rc = -EPERM; /* labels/ holds symlinks only: write in incoming/ */
	} else if (p->kind == K_DATA || p->kind == K_STORE || p->kind == K_ROOT) {
		rc = -EACCES;
	} else {
		rc = -ENOTDIR;
	}
	fuse_reply_err(req, -rc);
}

/* ------------------------------------------------------ reading, writing */

static void op_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi)
{
	as_daemon();
	(void)ino;
	struct handle *h = (struct handle *)(uintptr_t)fi->fh;
	struct fuse_bufvec bv = FUSE_BUFVEC_INIT(size);
	bv.buf[0].flags = FUSE_BUF_IS_FD | FUSE_BUF_FD_SEEK;
	bv.buf[0].pos = off;
	if (!h->v) {
		if (h->fd < 0 && !h->size) {
			fuse_reply_buf(req, NULL, 0); /* empty, or created and not yet committed */
			return;
		}
		if (h->start != 0 || h->start + h->len != h->size) {
			read_chunked(req, h, size, off);
			return;
		}
		bv.buf[0].fd = h->fd;
		fuse_reply_data(req, &bv, FUSE_BUF_SPLICE_MOVE);
		return;
	}
	struct version *v = h->v;
	pthread_mutex_lock(&v->mu);
	int fd = staged(v) ? casfs_writer_fd(v->w) : version_base_fd(v);
	if (fd < 0) {
		bool lost = !staged(v) && v->base[0] && v->base_size;
		pthread_mutex_unlock(&v->mu);
		if (lost)
			fuse_reply_err(req, EIO); /* could not be fetched, or damaged */
		else
			fuse_reply_buf(req, NULL, 0); /* empty */
		return;
	}
	/* Copy out under the lock: a concurrent commit replaces the fd. */
	char *buf = malloc(size);
	ssize_t n = buf ? pread(fd, buf, size, off) : -1;
	int e = errno;
	pthread_mutex_unlock(&v->mu);
	if (n < 0)
		fuse_reply_err(req, buf ? e : ENOMEM);
	else
		fuse_reply_buf(req, buf, (size_t)n);
	free(buf);
}

static void op_write(fuse_req_t req, fuse_ino_t ino, const char *buf, size_t size, off_t off,
		     struct fuse_file_info *fi)
{
	(void)ino;
	struct handle *h = (struct handle *)(uintptr_t)fi->fh;
	if (!h->v || !h->writable) {
		fuse_reply_err(req, EBADF);
		return;
	}
	struct version *v = h->v;
	fs_identity(h->uid, h->gid); /* a write may start a new staging file */
	if (__atomic_load_n(&h->flushed, __ATOMIC_RELAXED)) {
		/* Written again through a duplicate descriptor (or a shared
		 * mapping): the handle is open after all. */
		pthread_mutex_lock(&cur_mu);
		if (h->flushed) {
			h->flushed = false;
			v->flushed--;
		}
		pthread_mutex_unlock(&cur_mu);
	}
	pthread_mutex_lock(&v->mu);
	int rc = v->err ? v->err : casfs_writer_pwrite(v->w, buf, size, (uint64_t)off);
	bool killed = false;
	if (rc == 0) {
		killed = version_kill_suidgid(v);
		v->dirty = true;
		v->mtime_ns = now_ns();
	} else if (!v->err) {
		v->err = rc;
		fs_log(LOG_WARNING, "write to %s/incoming/%s failed: %s; this version will not be committed",
		       v->node->st->id, v->node->name, casfs_error_last());
	}
	pthread_mutex_unlock(&v->mu);
	/* Before the reply: once the write returns, its program may close
	 * the handle, and the version may go. */
	if (killed)
		inval_attrs(v->node);
	/* Another handle of the version may have these bytes in the page
	 * cache from before: they are stale now.  (This writer holds no
	 * page lock: it writes past the cache.) */
	if (rc == 0 && h->direct && __atomic_load_n(&v->handles, __ATOMIC_RELAXED) > 1)
		fuse_lowlevel_notify_inval_inode(fs.se, v->node->ino, off, (off_t)size);
	if (rc < 0)
		fuse_reply_err(req, -rc);
	else
		fuse_reply_write(req, size);
}

/* close(2): the last handle of a version commits it, and close returns the
 * result. */
static void op_flush(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	(void)ino;
	set_caller(req);
	struct handle *h = (struct handle *)(uintptr_t)fi->fh;
	int rc = 0;
	if (h && h->v) {
		/* Whichever handle is last commits, a reader's too. */
		struct version *v = h->v;
		/* A process that only inherited the descriptor (a child of a
		 * multithreaded writer closing it at exec or exit) does not
		 * end the version: the opener may be writing still. */
		pid_t tid = fuse_req_ctx(req)->pid;
		long tgid = -1, opener = -1;
		if (tid != h->opener_tid) {
			/* Asked now, not at open: a program that closes in the
			 * thread that opened (nearly all) never pays for
			 * reading /proc.  If the opening thread is gone, the
			 * process cannot be told: the close commits. */
			opener = __atomic_load_n(&h->opener, __ATOMIC_RELAXED);
			if (opener == OPENER_UNASKED) {
				opener = tgid_of(h->opener_tid);
				__atomic_store_n(&h->opener, opener, __ATOMIC_RELAXED);
			}
			if (opener >= 0)
				tgid = tgid_of(tid);
		}
		if (tgid >= 0 && tgid != opener) {
			fuse_reply_err(req, 0);
			return;
		}
		/* Release comes after close(2) returns, so a handle closed by
		 * its program still counts until then: count it out here. */
		pthread_mutex_lock(&cur_mu);
		if (!h->flushed) {
			h->flushed = true;
			v->flushed++;
		}
		bool last = v->handles - v->flushed <= 0;
		pthread_mutex_unlock(&cur_mu);
		/* The kernel flushes at every close(2) of a descriptor, also of
		 * one whose duplicate stays open (`cmd > file` opens, dup2()s,
		 * closes): such a close commits what is there, as a truncating
		 * open shows an empty file at once on any filesystem; the last
		 * close commits again if written since. */
		if (last || fs.sync) {
			pthread_mutex_lock(&v->mu);
			rc = version_commit(v, false);
			pthread_mutex_unlock(&v->mu);
		}
	}
	fuse_reply_err(req, -rc);
}

/* fsync(2) of any file or directory of a store: commit what is being
 * written, then make the store's published changes durable (they wait
 * for the flusher otherwise). */
static void op_fsync(fuse_req_t req, fuse_ino_t ino, int datasync, struct fuse_file_info *fi)
{
	(void)datasync;
	set_caller(req);
	struct handle *h = (struct handle *)(uintptr_t)fi->fh;
	int rc = 0;
	if (h && h->v && h->writable) {
		pthread_mutex_lock(&h->v->mu);
		rc = version_commit(h->v, false);
		pthread_mutex_unlock(&h->v->mu);
	}
	struct node *x = node_get(ino);
	if (rc == 0 && x && x->st)
		rc = fstore_sync(x->st);
	fuse_reply_err(req, -rc);
}

static void op_fsyncdir(fuse_req_t req, fuse_ino_t ino, int datasync, struct fuse_file_info *fi)
{
	(void)datasync;
	(void)fi;
	struct node *x = node_get(ino);
	fuse_reply_err(req, x && x->st ? -fstore_sync(x->st) : -fstore_sync_all());
}

static void handle_close(struct handle *h, bool commit);

/* A handle whose open reply did not reach the kernel. */
static void drop_handle(struct fuse_file_info *fi)
{
	struct handle *h = (struct handle *)(uintptr_t)fi->fh;
	if (h) {
		backing_put(h, true);
		untrack(&h->link);
		handle_close(h, false);
	}
	fi->fh = 0;
}

static void op_release(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	(void)ino;
	set_caller(req);
	struct handle *h = (struct handle *)(uintptr_t)fi->fh;
	if (h) {
		/* A release carries no caller: commit as the opener. */
		fs_identity(h->uid, h->gid);
		/* The kernel holds the backing file while it needs it. */
		backing_put(h, true);
		untrack(&h->link);
		handle_close(h, true);
	}
	fuse_reply_err(req, 0);
}

/* Frees a handle; commit: commit its version if it is the last one. */
static void handle_close(struct handle *h, bool commit)
{
	if (h->v) {
		struct version *v = h->v;
		pthread_mutex_lock(&v->mu);
		/* Writes after the last flush (a shared mapping written back
		 * at munmap) are committed here; not a version whose commit at
		 * close failed: close(2) said it was not stored, so it is not
		 * stored behind the program's back later. */
		if (v->handles == 1 && commit && !v->commit_failed)
			version_commit(v, false);
		pthread_mutex_unlock(&v->mu);
		pthread_mutex_lock(&cur_mu);
		if (h->flushed)
			v->flushed--;
		bool last = --v->handles == 0;
		if (last && v->node->cur == v)
			v->node->cur = NULL;
		pthread_mutex_unlock(&cur_mu);
		if (last)
			version_put(v);
	} else {
		if (h->fd >= 0)
			close(h->fd);
		if (h->st) {
			pthread_mutex_destroy(&h->mu);
			fstore_unref(h->st);
		}
	}
	free(h);
}

void fs_ops_teardown(void)
{
	while (live_files.next != &live_files) {
		struct handle *h = (struct handle *)live_files.next;
		backing_put(h, false); /* the connection is gone, and its ids */
		untrack(&h->link);
		handle_close(h, false); /* its program closed it: flush committed */
	}
	while (live_dirs.next != &live_dirs)
		dirhandle_free((struct dirhandle *)live_dirs.next);
}

/* ------------------------------------------------------------ setattr */

static void op_setattr(fuse_req_t req, fuse_ino_t ino, struct stat *attr, int to_set,
		       struct fuse_file_info *fi)
{
	set_caller(req);
	struct node *x = node_get(ino);
	int rc = 0;
	if (!x) {
		fuse_reply_err(req, ENOENT);
		return;
	}
	if (x->kind != K_IFILE && x->kind != K_LDIR && x->kind != K_IDIR) {
		/* data/, blobs, symlinks and the fixed directories keep
		 * their attributes; a time change on them is harmless and
		 * ignored so that tools like touch -h and tar succeed. */
		if (to_set & (FUSE_SET_ATTR_MODE | FUSE_SET_ATTR_SIZE))
			rc = -EPERM;
		else if ((to_set & (FUSE_SET_ATTR_UID | FUSE_SET_ATTR_GID)) && x->kind != K_LINK)
			rc = -EPERM; /* label symlinks take cp -a's lchown as a no-op */
		if (rc == 0)
			op_getattr(req, ino, fi);
		else
			fuse_reply_err(req, -rc);
		return;
	}
	if (fs.read_only) {
		fuse_reply_err(req, EROFS);
		return;
	}
	if (x->gone) {
		fuse_reply_err(req, ENOENT);
		return;
	}
	char *name = node_name(x);
	if (!name) {
		fuse_reply_err(req, ENOMEM);
		return;
	}
	struct version *v = fi ? handle_version(fi) : NULL;
	struct version *vref = NULL;
	if (!v)
		v = vref = cur_get(x);
	bool temp = false;
	if ((to_set & FUSE_SET_ATTR_SIZE) && x->kind == K_IFILE && !v) {
		/* truncate(2) on a closed file: a version of its own,
		 * committed at once. */
		rc = version_new(x, attr->st_size == 0, &v);
		temp = rc == 0;
	}
	int64_t mt = 0; /* any time, also before 1970, when set_mt */
	bool set_mt = (to_set & (FUSE_SET_ATTR_MTIME | FUSE_SET_ATTR_MTIME_NOW)) != 0;
	if (to_set & FUSE_SET_ATTR_MTIME_NOW)
		mt = now_ns();
	else if (to_set & FUSE_SET_ATTR_MTIME)
		mt = (int64_t)attr->st_mtim.tv_sec * 1000000000LL + attr->st_mtim.tv_nsec;
	uint32_t mode = attr->st_mode & 07777;
	if (rc == 0 && v && x->kind == K_IFILE) {
		pthread_mutex_lock(&v->mu);
		if (to_set & FUSE_SET_ATTR_SIZE) {
			if (!staged(v) && (uint64_t)attr->st_size == v->base_size) {
				/* nothing to do */
			} else if ((rc = casfs_writer_truncate(v->w, (uint64_t)attr->st_size)) == 0) {
				v->dirty = true;
				v->mtime_ns = now_ns();
			} else if (!v->err) {
				v->err = rc;
			}
		}
		if (to_set & FUSE_SET_ATTR_MODE) {
			v->set_mode = true;
			v->mode = mode;
		} else if (version_kill_suidgid(v)) {
			mode = v->mode; /* truncate(2) and chown(2) */
			to_set |= FUSE_SET_ATTR_MODE;
		}
		if (set_mt)
			v->mtime_ns = mt;
		bool committed = !v->dirty;
		if (temp)
			rc = rc ? rc : version_commit(v, false);
		pthread_mutex_unlock(&v->mu);
		/* Also on the label itself when it exists now. */
		if (rc == 0 && committed && !temp)
			casfs_label_setattr(x->st->s, name, (to_set & FUSE_SET_ATTR_MODE) ? &mode : NULL,
					    set_mt ? &mt : NULL);
		if (temp)
			version_put(v);
	} else if (rc == 0) {
		if (to_set & FUSE_SET_ATTR_SIZE)
			rc = x->kind == K_IFILE ? -EIO : -EISDIR;
		else if (to_set & (FUSE_SET_ATTR_MODE | FUSE_SET_ATTR_MTIME | FUSE_SET_ATTR_MTIME_NOW))
			rc = casfs_label_setattr(x->st->s, name, (to_set & FUSE_SET_ATTR_MODE) ? &mode : NULL,
						 set_mt ? &mt : NULL);
	}
	free(name);
	if (vref)
		version_put(vref);
	if (rc < 0)
		fuse_reply_err(req, -rc);
	else
		op_getattr(req, ino, fi);
}

/* ---------------------------------------------------------------- xattr */

/* The digest a file shows as user.casfs.hash. */
static int node_digest(struct node *x, char hex[CASFS_HEX_MAX])
{
	if (x->kind == K_BLOB) {
		snprintf(hex, CASFS_HEX_MAX, "%s", x->name);
		return 0;
	}
	if (x->kind != K_LINK && x->kind != K_IFILE)
		return -ENODATA;
	if (x->gone) {
		snprintf(hex, CASFS_HEX_MAX, "%s", x->frozen);
		return hex[0] ? 0 : -ENODATA;
	}
	struct version *v = x->kind == K_IFILE ? cur_get(x) : NULL;
	if (v) {
		pthread_mutex_lock(&v->mu);
		int rc = v->dirty || !v->base[0] ? -ENODATA : 0; /* not hashed yet */
		if (rc == 0)
			snprintf(hex, CASFS_HEX_MAX, "%s", v->base);
		pthread_mutex_unlock(&v->mu);
		version_put(v);
		return rc;
	}
	char *name = node_name(x);
	int rc = name ? casfs_label_get(x->st->s, name, hex) : -ENOMEM;
	free(name);
	return rc == -ENOENT ? -ENODATA : rc;
}

/* The error for an xattr other than the digest: casfs keeps no user.*
 * attributes but the digest (ENODATA), and has no ACLs, security labels or
 * trusted.* attributes at all (ENOTSUP, as a filesystem without them
 * answers).  ENOTSUP lets ls(1), cp(1) and the like stop asking for ACLs
 * and SELinux labels after the first file: each question is a round trip
 * to the daemon that the kernel does not cache. */
static int xattr_absent(const char *name)
{
	return strncmp(name, "user.", 5) == 0 ? ENODATA : ENOTSUP;
}

static void op_getxattr(fuse_req_t req, fuse_ino_t ino, const char *name, size_t size)
{
	as_daemon();
	struct node *x = node_get(ino);
	if (!x) {
		fuse_reply_err(req, ENOENT);
		return;
	}
	if (strcmp(name, XATTR_HASH) != 0) {
		fuse_reply_err(req, xattr_absent(name));
		return;
	}
	char hex[CASFS_HEX_MAX];
	int rc = node_digest(x, hex);
	if (rc < 0) {
		fuse_reply_err(req, -rc);
		return;
	}
	size_t n = strlen(hex);
	if (size == 0)
		fuse_reply_xattr(req, n);
	else if (size < n)
		fuse_reply_err(req, ERANGE);
	else
		fuse_reply_buf(req, hex, n);
}

static void op_listxattr(fuse_req_t req, fuse_ino_t ino, size_t size)
{
	as_daemon();
	struct node *x = node_get(ino);
	if (!x) {
		fuse_reply_err(req, ENOENT);
		return;
	}
	char hex[CASFS_HEX_MAX];
	bool has = node_digest(x, hex) == 0;
	size_t n = has ? sizeof(XATTR_HASH) : 0;
	if (size == 0)
		fuse_reply_xattr(req, n);
	else if (size < n)
		fuse_reply_err(req, ERANGE);
	else
		fuse_reply_buf(req, XATTR_HASH, n);
}

static void op_setxattr(fuse_req_t req, fuse_ino_t ino, const char *name, const char *value,
			size_t size, int flags)
{
	(void)ino;
	(void)value;
	(void)size;
	(void)flags;
	fuse_reply_err(req, strcmp(name, XATTR_HASH) == 0 ? EPERM : ENOTSUP);
}

static void op_removexattr(fuse_req_t req, fuse_ino_t ino, const char *name)
{
	(void)ino;
	fuse_reply_err(req, strcmp(name, XATTR_HASH) == 0 ? EPERM : xattr_absent(name));
}

/* ---------------------------------------------------------------- misc */

static void op_statfs(fuse_req_t req, fuse_ino_t ino)
{
	as_daemon();
	(void)ino;
	struct statvfs sv;
	if (statvfs(fs.root_path, &sv) < 0)
		fuse_reply_err(req, errno);
	else
		fuse_reply_statfs(req, &sv);
}

static void op_init(void *ud, struct fuse_conn_info *conn)
{
	(void)ud;
	if (conn->capable & FUSE_CAP_ATOMIC_O_TRUNC)
		conn->want |= FUSE_CAP_ATOMIC_O_TRUNC;
	if (conn->capable & FUSE_CAP_SPLICE_WRITE)
		conn->want |= FUSE_CAP_SPLICE_WRITE | FUSE_CAP_SPLICE_MOVE;
	conn->want &= ~FUSE_CAP_WRITEBACK_CACHE; /* commit at close needs every write */
	conn->max_write = IO_SIZE;
	conn->max_read = 0;
}

const struct fuse_lowlevel_ops casfs_fs_ops = {
	.init = op_init,
	.lookup = op_lookup,
	.forget = op_forget,
	.forget_multi = op_forget_multi,
	.getattr = op_getattr,
	.setattr = op_setattr,
	.readlink = op_readlink,
	.mkdir = op_mkdir,
	.unlink = op_unlink,
	.rmdir = op_rmdir,
	.symlink = op_symlink,
	.rename = op_rename,
	.link = op_link,
	.open = op_open,
	.read = op_read,
	.write = op_write,
	.flush = op_flush,
	.release = op_release,
	.fsync = op_fsync,
	.fsyncdir = op_fsyncdir,
	.opendir = op_opendir,
	.readdir = op_readdir,
	.releasedir = op_releasedir,
	.statfs = op_statfs,
	.setxattr = op_setxattr,
	.getxattr = op_getxattr,
	.listxattr = op_listxattr,
	.removexattr = op_removexattr,
	.create = op_create,
};
