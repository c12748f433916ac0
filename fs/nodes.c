/*
 * nodes.c — the daemon's inode table and its cache of open stores.
 *
 * A node is one thing the kernel knows by inode number: the root, a store,
 * data/, a blob, a label directory, a label (as a symlink in labels/ or a
 * file in incoming/).  Nodes are keyed by (kind, store, name) so the same
 * thing always has the same inode number while the kernel remembers it;
 * the kernel's lookup count (nlookup) and our own pins decide when a node
 * is freed.
 */
#include "fsint.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>
#include <string.h>
#include <limits.h>
#include <sys/stat.h>

static pthread_mutex_t tbl_mu = PTHREAD_MUTEX_INITIALIZER;
static struct node **by_ino, **by_key;
static size_t nbuckets, nnodes;
static uint64_t next_ino = 2;
static struct node root_node = { .ino = FUSE_ROOT_ID, .kind = K_ROOT, .name = "" };

static struct fstore *stores;
static pthread_mutex_t stores_mu = PTHREAD_MUTEX_INITIALIZER;

static uint64_t hash_key(enum kind k, const struct fstore *st, const char *name)
{
	uint64_t h = 1469598103934665603ULL ^ (uint64_t)k ^ ((uint64_t)(uintptr_t)st << 7);
	for (const unsigned char *p = (const unsigned char *)name; *p; p++)
		h = (h ^ *p) * 1099511628211ULL;
	return h;
}

static void table_grow(void)
{
	size_t n = nbuckets ? nbuckets * 2 : 4096;
	struct node **bi = calloc(n, sizeof(*bi)), **bk = calloc(n, sizeof(*bk));
	if (!bi || !bk) {
		free(bi);
		free(bk);
		return; /* keep the old, longer chains */
	}
	for (size_t i = 0; i < nbuckets; i++) {
		for (struct node *x = by_ino[i], *nx; x; x = nx) {
			nx = x->next_ino;
			x->next_ino = bi[x->ino % n];
			bi[x->ino % n] = x;
		}
		for (struct node *x = by_key[i], *nx; x; x = nx) {
			nx = x->next_key;
			size_t b = hash_key(x->kind, x->st, x->name) % n;
			x->next_key = bk[b];
			bk[b] = x;
		}
	}
	free(by_ino);
	free(by_key);
	by_ino = bi;
	by_key = bk;
	nbuckets = n;
}

static void unlink_key(struct node *x)
{
	struct node **pp = &by_key[hash_key(x->kind, x->st, x->name) % nbuckets];
	while (*pp && *pp != x)
		pp = &(*pp)->next_key;
	if (*pp)
		*pp = x->next_key;
}

static void unlink_ino(struct node *x)
{
	struct node **pp = &by_ino[x->ino % nbuckets];
	while (*pp && *pp != x)
		pp = &(*pp)->next_ino;
	if (*pp)
		*pp = x->next_ino;
}

struct node *node_get(fuse_ino_t ino)
{
	if (ino == FUSE_ROOT_ID)
		return &root_node;
	pthread_mutex_lock(&tbl_mu);
	struct node *x = nbuckets ? by_ino[ino % nbuckets] : NULL;
	while (x && x->ino != ino)
		x = x->next_ino;
	pthread_mutex_unlock(&tbl_mu);
	return x;
}

struct node *node_lookup(enum kind k, struct fstore *st, const char *name)
{
	pthread_mutex_lock(&tbl_mu);
	if (!nbuckets || nnodes > nbuckets)
		table_grow();
	if (!nbuckets) {
		pthread_mutex_unlock(&tbl_mu);
		return NULL;
	}
	size_t b = hash_key(k, st, name) % nbuckets;
	struct node *x = by_key[b];
	while (x && !(x->kind == k && x->st == st && strcmp(x->name, name) == 0))
		x = x->next_key;
	if (!x) {
		x = calloc(1, sizeof(*x));
		char *nm = strdup(name);
		if (!x || !nm) {
			free(x);
			free(nm);
			pthread_mutex_unlock(&tbl_mu);
			return NULL;
		}
		x->ino = next_ino++;
		x->kind = k;
		x->st = st;
		x->name = nm;
		if (st)
			fstore_ref(st);
		x->next_key = by_key[b];
		by_key[b] = x;
		x->next_ino = by_ino[x->ino % nbuckets];
		by_ino[x->ino % nbuckets] = x;
		nnodes++;
	}
	x->nlookup++;
	pthread_mutex_unlock(&tbl_mu);
	return x;
}

static void maybe_free(struct node *x)
{
	if (x == &root_node || x->nlookup > 0 || x->pins > 0)
		return;
	unlink_key(x);
	unlink_ino(x);
	nnodes--;
	struct fstore *st = x->st;
	node_drop_listing(x);
	free(x->name);
	free(x);
	if (st)
		fstore_unref(st);
}

void node_forget(fuse_ino_t ino, uint64_t n)
{
	if (ino == FUSE_ROOT_ID)
		return;
	pthread_mutex_lock(&tbl_mu);
	struct node *x = nbuckets ? by_ino[ino % nbuckets] : NULL;
	while (x && x->ino != ino)
		x = x->next_ino;
	if (x) {
		x->nlookup = x->nlookup > n ? x->nlookup - n : 0;
		maybe_free(x);
	}
	pthread_mutex_unlock(&tbl_mu);
}

void node_pin(struct node *x)
{
	pthread_mutex_lock(&tbl_mu);
	x->pins++;
	pthread_mutex_unlock(&tbl_mu);
}

void node_unpin(struct node *x)
{
	pthread_mutex_lock(&tbl_mu);
	x->pins--;
	maybe_free(x);
	pthread_mutex_unlock(&tbl_mu);
}

char *node_name(struct node *x)
{
	pthread_mutex_lock(&tbl_mu);
	char *n = strdup(x->name);
	pthread_mutex_unlock(&tbl_mu);
	return n;
}

/* Renames every node of kind k (and its directory twin) at from or under
 * from/ to the same place under to. */
static void rename_kind(enum kind k, struct fstore *st, const char *from, const char *to)
{
	size_t fl = strlen(from);
	for (size_t i = 0; i < nbuckets; i++) {
		for (struct node *x = by_ino[i]; x; x = x->next_ino) {
			if (x->kind != k || x->st != st || strncmp(x->name, from, fl) != 0 ||
			    (x->name[fl] != '\0' && x->name[fl] != '/'))
				continue;
			char *nn = NULL;
			if (asprintf(&nn, "%s%s", to, x->name + fl) < 0)
				continue;
			unlink_key(x);
			free(x->name);
			x->name = nn;
			size_t b = hash_key(x->kind, x->st, x->name) % nbuckets;
			x->next_key = by_key[b];
			by_key[b] = x;
		}
	}
}

/* The kinds of node on one side: labels/ or incoming/.  The kernel knows
 * the two sides as separate trees, so a change made through one side only
 * moves that side's nodes; the other side's see the change when the
 * kernel looks them up again (within the label timeout). */
static const enum kind *side_kinds(bool incoming)
{
	static const enum kind lab[] = { K_LDIR, K_LINK }, inc[] = { K_IDIR, K_IFILE };
	return incoming ? inc : lab;
}

/* Marks the nodes of one side at name gone (tbl_mu held); returns the
 * K_IFILE one, pinned. */
static struct node *mark_gone(struct fstore *st, bool incoming, const char *name, const char *digest)
{
	const enum kind *kinds = side_kinds(incoming);
	struct node *ifile = NULL;
	for (size_t i = 0; i < 2; i++) {
		size_t b = hash_key(kinds[i], st, name) % nbuckets;
		for (struct node *x = by_key[b]; x; x = x->next_key) {
			if (x->kind != kinds[i] || x->st != st || strcmp(x->name, name) != 0)
				continue;
			/* Out of the way of the name: a unique key nobody
			 * looks up, and the flag that stops label calls. */
			unlink_key(x);
			char *nn = NULL;
			if (asprintf(&nn, "%s\x01gone.%llu", name, (unsigned long long)x->ino) >= 0) {
				free(x->name);
				x->name = nn;
			}
			x->gone = true;
			snprintf(x->frozen, sizeof(x->frozen), "%s", digest ? digest : "");
			size_t b2 = hash_key(x->kind, x->st, x->name) % nbuckets;
			x->next_key = by_key[b2];
			by_key[b2] = x;
			if (x->kind == K_IFILE) {
				x->pins++;
				ifile = x;
			}
			break;
		}
	}
	return ifile;
}

struct node *node_gone(struct fstore *st, bool incoming, const char *name, const char *digest)
{
	pthread_mutex_lock(&tbl_mu);
	struct node *x = nbuckets ? mark_gone(st, incoming, name, digest) : NULL;
	pthread_mutex_unlock(&tbl_mu);
	return x;
}

struct node *node_renamed(struct fstore *st, bool incoming, const char *from, const char *to,
			  const char *to_digest)
{
	pthread_mutex_lock(&tbl_mu);
	if (!nbuckets) {
		pthread_mutex_unlock(&tbl_mu);
		return NULL;
	}
	struct node *replaced = mark_gone(st, incoming, to, to_digest);
	const enum kind *kinds = side_kinds(incoming);
	for (size_t i = 0; i < 2; i++)
		rename_kind(kinds[i], st, from, to);
	pthread_mutex_unlock(&tbl_mu);
	return replaced;
}

/* -------------------------------------------------------------- stores */

void fstore_ref(struct fstore *st)
{
	__atomic_add_fetch(&st->refs, 1, __ATOMIC_RELAXED);
}

void fstore_unref(struct fstore *st)
{
	(void)st; /* stores stay open for the life of the mount */
}

int fstore_get(const char *id, struct fstore **out)
{
	pthread_mutex_lock(&stores_mu);
	for (struct fstore *st = stores; st; st = st->next) {
		if (!st->dead && strcmp(st->id, id) == 0) {
			*out = st;
			pthread_mutex_unlock(&stores_mu);
			return 0;
		}
	}
	casfs_store *s;
	int rc = casfs_store_open(&s, fs.root, id);
	if (rc < 0) {
		pthread_mutex_unlock(&stores_mu);
		return rc;
	}
	struct fstore *st = calloc(1, sizeof(*st));
	if (!st) {
		casfs_store_free(s);
		pthread_mutex_unlock(&stores_mu);
		return -ENOMEM;
	}
	snprintf(st->id, sizeof(st->id), "%s", id);
	st->s = s;
	/* The daemon's own bookkeeping in a store (sessions, clearing
	 * staging) is done as the store's owner, so the files it makes are
	 * the owner's. */
	char path[PATH_MAX];
	struct stat sb;
	uid_t saved_uid;
	gid_t saved_gid;
	fs_identity_current(&saved_uid, &saved_gid);
	snprintf(path, sizeof(path), "%s/%s", fs.root_path, id);
	if (!fs.remote && lstat(path, &sb) == 0) {
		st->uid = sb.st_uid;
		st->gid = sb.st_gid;
		st->mode = sb.st_mode & 07777;
	} else {
		st->uid = fs.uid;
		st->gid = fs.gid;
		st->mode = 0755;
	}
	fs_identity(st->uid, st->gid);
	/* Debris of a daemon or command that died: gone before we serve. */
	if (!fs.read_only) {
		unsigned removed = 0;
		casfs_store_clean_staging(s, &removed);
		if (removed)
			fs_log(LOG_NOTICE, "store %s: removed %u staging files of dead writers", id, removed);
	}
	pthread_mutex_init(&st->vmu, NULL);
	st->session = -1;
	if (!fs.read_only) {
		int64_t since = 0;
		if (casfs_store_session_begin(s, &st->session, &since) < 0)
			fs_log(LOG_WARNING, "store %s: %s", id, casfs_error_last());
		if (since) {
			st->suspect_since = since;
			fs_log(LOG_NOTICE, "store %s: an earlier daemon stopped uncleanly; blobs stored "
			       "since its last sync are verified before they are served", id);
		}
		/* With a session to tell an unclean stop by, commits need not
		 * wait for the disk: the flusher syncs them (SPEC §6). */
		if (st->session >= 0 && !fs.sync)
			casfs_store_defer_sync(s, 1);
	}
	fs_identity(saved_uid, saved_gid);
	st->next = stores;
	stores = st;
	*out = st;
	pthread_mutex_unlock(&stores_mu);
	return 0;
}

void fstore_mark_dead(const char *id)
{
	pthread_mutex_lock(&stores_mu);
	for (struct fstore *st = stores; st; st = st->next)
		if (strcmp(st->id, id) == 0)
			st->dead = true;
	pthread_mutex_unlock(&stores_mu);
}

void fstore_close_all(void)
{
	pthread_mutex_lock(&stores_mu);
	for (struct fstore *st = stores, *n; st; st = n) {
		n = st->next;
		/* A clean stop: everything durable, then the session ends.  If
		 * the last sync fails, the session stays, so the next daemon
		 * checks what this one stored since its last good sync. */
		if (fstore_sync(st) == 0) {
			casfs_store_session_end(st->s, st->session);
		} else {
			fs_log(LOG_WARNING, "store %s: its session is kept: what was stored since the last "
			       "good sync will be checked at the next start", st->id);
			close(st->session);
		}
		casfs_store_free(st->s);
		pthread_mutex_destroy(&st->vmu);
		free(st->verified);
		free(st);
	}
	stores = NULL;
	pthread_mutex_unlock(&stores_mu);
	for (size_t i = 0; i < nbuckets; i++) {
		for (struct node *x = by_ino[i], *n; x; x = n) {
			n = x->next_ino;
			node_drop_listing(x);
			free(x->name);
			free(x);
		}
	}
	free(by_ino);
	free(by_key);
	by_ino = by_key = NULL;
	nbuckets = nnodes = 0;
}

/* ------------------------------------------------------- the flusher */

int fstore_sync(struct fstore *st)
{
	int rc = casfs_store_sync(st->s, st->session);
	/* A failed sync fails every later one (casfs_store_sync): said once. */
	if (rc < 0 && !__atomic_exchange_n(&st->sync_failed, true, __ATOMIC_RELAXED))
		fs_log(LOG_ERR, "store %s: %s", st->id, casfs_error_last());
	return rc;
}

int fstore_sync_all(void)
{
	/* Stores are only ever added at the head, and freed after the last
	 * request and the flusher. */
	pthread_mutex_lock(&stores_mu);
	struct fstore *head = stores;
	pthread_mutex_unlock(&stores_mu);
	int rc = 0;
	for (struct fstore *st = head; st; st = st->next) {
		int r = __atomic_load_n(&st->dead, __ATOMIC_RELAXED) ? 0 : fstore_sync(st);
		if (r < 0 && rc == 0)
			rc = r;
	}
	return rc;
}

static pthread_t flusher;
static bool flusher_running, flusher_stop;
static pthread_mutex_t flusher_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t flusher_cv;

static void *flusher_main(void *arg)
{
	(void)arg;
	pthread_mutex_lock(&flusher_mu);
	while (!flusher_stop) {
		struct timespec at;
		clock_gettime(CLOCK_MONOTONIC, &at);
		int64_t ns = at.tv_nsec + fs.commit_ns;
		at.tv_sec += (time_t)(ns / 1000000000LL);
		at.tv_nsec = (long)(ns % 1000000000LL);
		while (!flusher_stop && pthread_cond_timedwait(&flusher_cv, &flusher_mu, &at) != ETIMEDOUT)
			;
		if (flusher_stop)
			break;
		pthread_mutex_unlock(&flusher_mu);
		fstore_sync_all();
		pthread_mutex_lock(&flusher_mu);
	}
	pthread_mutex_unlock(&flusher_mu);
	return NULL;
}

int fs_flusher_start(void)
{
	pthread_condattr_t ca;
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&flusher_cv, &ca);
	pthread_condattr_destroy(&ca);
	int rc = pthread_create(&flusher, NULL, flusher_main, NULL);
	if (rc != 0) {
		pthread_cond_destroy(&flusher_cv);
		return -rc;
	}
	flusher_running = true;
	return 0;
}

void fs_flusher_stop(void)
{
	if (!flusher_running)
		return;
	pthread_mutex_lock(&flusher_mu);
	flusher_stop = true;
	pthread_cond_signal(&flusher_cv);
	pthread_mutex_unlock(&flusher_mu);
	pthread_join(flusher, NULL);
	pthread_cond_destroy(&flusher_cv);
	flusher_running = false;
}

/* ------------------------------------------------- checks after a crash */

static bool verified_has(struct fstore *st, const char *hex)
{
	for (size_t i = 0; i < st->nverified; i++)
		if (strcmp(st->verified[i], hex) == 0)
			return true;
	return false;
}

int fstore_check_blob(struct fstore *st, const char *hex, int fd)
{
	if (!st->suspect_since)
		return 0;
	struct stat sb;
	if (fstat(fd, &sb) < 0)
		return -errno;
	int64_t mtime = (int64_t)sb.st_mtim.tv_sec * 1000000000LL + sb.st_mtim.tv_nsec;
	if (mtime < st->suspect_since)
		return 0; /* older than the crash: published and synced before it */
	pthread_mutex_lock(&st->vmu);
	bool ok = verified_has(st, hex);
	pthread_mutex_unlock(&st->vmu);
	if (ok)
		return 0;
	int rc = casfs_blob_verify(st->s, hex, fd);
	if (rc == -EIO) {
		fs_log(LOG_WARNING, "store %s: %s; moved to quarantine", st->id, casfs_error_last());
		casfs_blob_quarantine(st->s, hex);
		return -EIO;
	}
	if (rc < 0)
		return rc;
	pthread_mutex_lock(&st->vmu);
	if (st->nverified == st->capverified) {
		size_t cap = st->capverified ? st->capverified * 2 : 64;
		void *p = realloc(st->verified, cap * sizeof(*st->verified));
		if (p) {
			st->verified = p;
			st->capverified = cap;
		}
	}
	if (st->nverified < st->capverified)
		snprintf(st->verified[st->nverified++], CASFS_HEX_MAX, "%s", hex);
	pthread_mutex_unlock(&st->vmu);
	return 0;
}
