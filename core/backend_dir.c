/*
 * backend_dir.c — stores kept in a local directory, in Theater's layout.
 *
 *   ROOT/<id>/data/<hex>        blobs, mode 0444, never modified in place
 *   ROOT/<id>/labels/<a>/<b>    label files: the hex digest, no newline
 *   ROOT/<id>/.casfs/config     "algo=sha256" (absent .casfs/ = Theater, sha1)
 *   ROOT/<id>/.casfs/staging/   files being written, each flock()ed by its
 *                               writer so dead writers' debris can be told
 *                               from live work
 *   ROOT/<id>/.casfs/lock       flock()ed by label writers and gc
 *   ROOT/<id>/.casfs/journal    JSON lines, rotated to journal.1
 *   ROOT/<id>/.casfs/trash/     blobs gc is about to delete
 *   ROOT/<id>/.casfs/quarantine/ what fsck --repair moved aside
 *
 * Every path is resolved from directory descriptors with O_NOFOLLOW, one
 * component at a time, so a symlink planted in the root is never followed.
 * Publishing is renameat2(RENAME_NOREPLACE) from staging (same filesystem),
 * so data/ only ever holds complete blobs.
 */
#include "internal.h"

#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#define META ".casfs"
#define CONFIG_MAX 4096
#define JOURNAL_MAX_DEFAULT (4u << 20)

struct dir_root {
	int fd;
};

struct dir_store {
	int fd;          /* the store directory */
	int meta_fd;     /* .casfs/, -1 until it exists */
	int staging_fd;  /* .casfs/staging/ */
	int data_fd;     /* data/, -1 until it exists */
	int labels_fd;   /* labels/, -1 until it exists */
	int journal_fd;  /* .casfs/journal, opened on first append */
	int lock_fd;     /* .casfs/lock, opened on first lock ... */
	long lock_pid;   /* ... by this process (not a parent's, after fork) */
	pthread_mutex_t lock_mu; /* the threads of this process, in turn */
	dev_t journal_dev; /* which file journal_fd is */
	ino_t journal_ino;
	bool named_staging; /* the filesystem has no O_TMPFILE */
	pthread_mutex_t mu; /* guards lazy creation and the journal */
};

static struct dir_root *R(casfs_root *r) { return r->b; }
static struct dir_store *S(casfs_store *s) { return s->b; }

/* ----------------------------------------------------------------- helpers */

static int xclose(int fd)
{
	if (fd >= 0)
		close(fd);
	return -1;
}

static int open_dir_at(int dirfd, const char *name)
{
	return openat(dirfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
}

/* A time in ns since the epoch as a timespec (tv_nsec in [0, 1e9) also
 * before 1970). */
static struct timespec ns_ts(int64_t ns)
{
	int64_t sec = ns / 1000000000LL, rem = ns % 1000000000LL;
	if (rem < 0) {
		sec--;
		rem += 1000000000LL;
	}
	return (struct timespec){ .tv_sec = (time_t)sec, .tv_nsec = (long)rem };
}

/* fsync unless the root is NOSYNC. */
static int maybe_fsync(casfs_store *s, int fd)
{
	if (casfs__nosync(s))
		return 0;
	if (fsync(fd) < 0)
		return casfs__errno(-errno, "fsync");
	return 0;
}

/* Removes name (file or tree) under dirfd, never following symlinks. */
static int rmtree_at(int dirfd, const char *name)
{
	if (unlinkat(dirfd, name, 0) == 0 || errno == ENOENT)
		return 0;
	if (errno != EISDIR && errno != EPERM)
		return -errno;
	int fd = open_dir_at(dirfd, name);
	if (fd < 0)
		return -errno;
	DIR *d = fdopendir(fd);
	if (!d) {
		close(fd);
		return -errno;
	}
	int rc = 0;
	struct dirent *e;
	while ((e = readdir(d))) {
		if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
			continue;
		int r = rmtree_at(fd, e->d_name);
		if (r < 0 && rc == 0)
			rc = r;
	}
	closedir(d);
	if (unlinkat(dirfd, name, AT_REMOVEDIR) < 0 && errno != ENOENT && rc == 0)
		rc = -errno;
	return rc;
}

/* Opens (creating if asked) the directory name under dirfd. */
static int mkopen_dir_at(int dirfd, const char *name, bool create)
{
	int fd = open_dir_at(dirfd, name);
	if (fd >= 0 || !create || errno != ENOENT)
		return fd;
	if (mkdirat(dirfd, name, 0777) < 0 && errno != EEXIST)
		return -1;
	return open_dir_at(dirfd, name);
}

static int write_small_file_at(int dirfd, const char *name, const char *text,
			       mode_t mode, bool sync)
{
	int fd = openat(dirfd, name, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode);
	if (fd < 0)
		return -errno;
	int rc = casfs__write_all(fd, text, strlen(text));
	if (rc == 0 && sync && fsync(fd) < 0)
		rc = -errno;
	close(fd);
	return rc;
}

/* Fills a fresh .casfs/ directory (config, staging/). */
static int init_meta_dir(int fd, casfs_algo algo, bool sync)
{
	char cfg[128];
	snprintf(cfg, sizeof(cfg), "# casfs store configuration\nformat=1\nalgo=%s\n",
		 casfs_algo_name(algo));
	int rc = write_small_file_at(fd, "config", cfg, 0644, sync);
	if (rc < 0)
		return rc;
	if (mkdirat(fd, "staging", 0777) < 0)
		return -errno;
	return 0;
}

/* Reads .casfs/config. */
static int read_config(int meta_fd, casfs_algo *algo)
{
	int fd = openat(meta_fd, "config", O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK);
	if (fd < 0)
		return casfs__errno(-errno == -ENOENT ? -EIO : -errno,
				    "store metadata .casfs/config is missing or unreadable");
	char buf[CONFIG_MAX + 1];
	ssize_t n = read(fd, buf, CONFIG_MAX);
	close(fd);
	if (n < 0)
		return casfs__errno(-errno, "reading .casfs/config");
	buf[n] = '\0';
	*algo = CASFS_SHA256;
	bool seen = false;
	for (char *line = strtok(buf, "\n"); line; line = strtok(NULL, "\n")) {
		if (line[0] == '#')
			continue;
		if (strncmp(line, "algo=", 5) == 0) {
			int rc = casfs_algo_parse(algo, line + 5);
			if (rc < 0)
				return casfs__err(-EIO, "store config names an unsupported algorithm '%.40s'",
						  line + 5);
			seen = true;
		} else if (strncmp(line, "format=", 7) == 0 && strcmp(line + 7, "1") != 0) {
			return casfs__err(-EIO, "store config has unknown format '%.20s'", line + 7);
		}
	}
	if (!seen)
		return casfs__err(-EIO, "store config does not name a hash algorithm");
	return 0;
}

/* ------------------------------------------------------------------- roots */

static int dir_root_open(casfs_root *r, const char *spec)
{
	struct dir_root *dr = calloc(1, sizeof(*dr));
	if (!dr)
		return casfs__err(-ENOMEM, "out of memory");
	if (r->flags & CASFS_ROOT_CREATE) {
		/* mkdir -p */
		char *p = strdup(spec);
		if (!p) {
			free(dr);
			return casfs__err(-ENOMEM, "out of memory");
		}
		for (char *q = p + 1; *q; q++) {
			if (*q != '/')
				continue;
			*q = '\0';
			if (mkdir(p, 0777) < 0 && errno != EEXIST) {
				int e = -errno;
				casfs__errno(e, "cannot create %s", p);
				free(p);
				free(dr);
				return e;
			}
			*q = '/';
		}
		if (mkdir(p, 0777) < 0 && errno != EEXIST) {
			int e = -errno;
			casfs__errno(e, "cannot create root %s", p);
			free(p);
			free(dr);
			return e;
		}
		free(p);
	}
	dr->fd = open(spec, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (dr->fd < 0) {
		int e = -errno;
		free(dr);
		return casfs__errno(e, "cannot open root %s", spec);
	}
	r->b = dr;
	return 0;
}

static void dir_root_close(casfs_root *r)
{
	struct dir_root *dr = R(r);
	if (!dr)
		return;
	close(dr->fd);
	free(dr);
}

static int dir_store_create(casfs_root *r, const char *id, casfs_algo algo)
{
	int rootfd = R(r)->fd;
	bool sync = !(r->flags & CASFS_ROOT_NOSYNC);
	char tmp[64] = ".casfs-new.";
	casfs__randhex(tmp + strlen(tmp), 16);
	if (mkdirat(rootfd, tmp, 0777) < 0)
		return casfs__errno(-errno, "cannot create store in root");
	int rc = 0, fd = open_dir_at(rootfd, tmp), meta = -1;
	if (fd < 0 || mkdirat(fd, "data", 0777) < 0 || mkdirat(fd, "labels", 0777) < 0 ||
	    mkdirat(fd, META, 0777) < 0 || (meta = open_dir_at(fd, META)) < 0) {
		rc = casfs__errno(-errno, "cannot create store");
		goto fail;
	}
	if ((rc = init_meta_dir(meta, algo, sync)) < 0) {
		casfs__errno(rc, "cannot create store configuration");
		goto fail;
	}
	if (sync && (fsync(meta) < 0 || fsync(fd) < 0)) {
		rc = casfs__errno(-errno, "fsync");
		goto fail;
	}
	if (renameat2(rootfd, tmp, rootfd, id, RENAME_NOREPLACE) < 0) {
		rc = -errno;
		if (rc == -EEXIST || rc == -ENOTEMPTY)
			rc = casfs__err(-EEXIST, "store '%s' already exists", id);
		else
			casfs__errno(rc, "cannot create store '%s'", id);
		goto fail;
	}
	xclose(meta);
	xclose(fd);
	if (sync && fsync(rootfd) < 0)
		return casfs__errno(-errno, "fsync root");
	return 0;
fail:
	xclose(meta);
	xclose(fd);
	rmtree_at(rootfd, tmp);
	return rc;
}

static int dir_store_remove(casfs_root *r, const char *id)
{
	int rootfd = R(r)->fd;
	char tmp[64] = ".casfs-del.";
	casfs__randhex(tmp + strlen(tmp), 16);
	if (renameat(rootfd, id, rootfd, tmp) < 0)
		return casfs__errno(-errno, "cannot remove store '%s'", id);
	int rc = rmtree_at(rootfd, tmp);
	if (rc < 0)
		return casfs__errno(rc, "store '%s' removed, but its files not all deleted (%s)", id, tmp);
	if (!(r->flags & CASFS_ROOT_NOSYNC))
		fsync(rootfd);
	return 0;
}

static int is_dir_entry(int dirfd, const struct dirent *e)
{
	if (e->d_type == DT_DIR)
		return 1;
	if (e->d_type != DT_UNKNOWN)
		return 0;
	struct stat st;
	return fstatat(dirfd, e->d_name, &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISDIR(st.st_mode);
}

static int is_reg_entry(int dirfd, const struct dirent *e)
{
	if (e->d_type == DT_REG)
		return 1;
	if (e->d_type != DT_UNKNOWN)
		return 0;
	struct stat st;
	return fstatat(dirfd, e->d_name, &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISREG(st.st_mode);
}

/* Opens a DIR stream on dirfd without consuming it. */
static DIR *dir_stream(int dirfd)
{
	int fd = openat(dirfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0)
		return NULL;
	DIR *d = fdopendir(fd);
	if (!d)
		close(fd);
	return d;
}

static int dir_store_list(casfs_root *r, casfs_name_fn fn, void *ud)
{
	int rootfd = R(r)->fd;
	DIR *d = dir_stream(rootfd);
	if (!d)
		return casfs__errno(-errno, "cannot list root");
	int rc = 0;
	struct dirent *e;
	while ((e = readdir(d))) {
		if (e->d_name[0] == '.' || !is_dir_entry(rootfd, e))
			continue;
		if (casfs_id_check(e->d_name) < 0)
			continue;
		if ((rc = fn(e->d_name, ud)) != 0)
			break;
	}
	closedir(d);
	casfs_error_clear();
	return rc;
}

/* ------------------------------------------------------------------ stores */

static int dir_store_open(casfs_store *s)
{
	struct dir_store *ds = calloc(1, sizeof(*ds));
	if (!ds)
		return casfs__err(-ENOMEM, "out of memory");
	ds->meta_fd = ds->staging_fd = ds->data_fd = ds->labels_fd = ds->journal_fd = -1;
	ds->lock_fd = -1;
	pthread_mutex_init(&ds->mu, NULL);
	pthread_mutex_init(&ds->lock_mu, NULL);
	s->b = ds;
	ds->fd = open_dir_at(R(s->root)->fd, s->id);
	if (ds->fd < 0) {
		int e = -errno;
		if (e == -ENOENT || e == -ENOTDIR || e == -ELOOP)
			return casfs__err(-ENOENT, "no store '%s' in this root", s->id);
		return casfs__errno(e, "cannot open store '%s'", s->id);
	}
	ds->meta_fd = open_dir_at(ds->fd, META);
	if (ds->meta_fd >= 0) {
		int rc = read_config(ds->meta_fd, &s->algo);
		if (rc < 0)
			return rc;
		ds->staging_fd = mkopen_dir_at(ds->meta_fd, "staging", true);
		/* A read-only store may lack staging/ and refuse its creation:
		 * writes will then fail with the reason. */
	} else if (errno == ENOENT) {
		s->algo = CASFS_SHA1; /* Theater store */
	} else {
		return casfs__errno(-errno, "cannot open %s/%s", s->id, META);
	}
	ds->data_fd = open_dir_at(ds->fd, "data");
	ds->labels_fd = open_dir_at(ds->fd, "labels");
	return 0;
}

static void dir_store_close(casfs_store *s)
{
	struct dir_store *ds = S(s);
	if (!ds)
		return;
	xclose(ds->fd);
	xclose(ds->meta_fd);
	xclose(ds->staging_fd);
	xclose(ds->data_fd);
	xclose(ds->labels_fd);
	xclose(ds->journal_fd);
	xclose(ds->lock_fd);
	pthread_mutex_destroy(&ds->mu);
	pthread_mutex_destroy(&ds->lock_mu);
	free(ds);
}

/* Makes sure .casfs/ and its staging/ exist: a Theater store gets them on
 * its first write, created aside and renamed in whole. */
static int ensure_meta(casfs_store *s)
{
	struct dir_store *ds = S(s);
	int rc = 0;
	if (__atomic_load_n(&ds->staging_fd, __ATOMIC_ACQUIRE) >= 0)
		return 0;
	pthread_mutex_lock(&ds->mu);
	if (ds->staging_fd >= 0)
		goto out;
	if (ds->meta_fd < 0) {
		bool sync = !casfs__nosync(s);
		char tmp[64] = META ".new.";
		casfs__randhex(tmp + strlen(tmp), 16);
		if (mkdirat(ds->fd, tmp, 0777) < 0) {
			rc = casfs__errno(-errno, "cannot create %s in store '%s'", META, s->id);
			goto out;
		}
		int fd = open_dir_at(ds->fd, tmp);
		rc = fd < 0 ? -errno : init_meta_dir(fd, s->algo, sync);
		if (rc == 0 && sync)
			fsync(fd);
		xclose(fd);
		if (rc == 0 && renameat2(ds->fd, tmp, ds->fd, META, RENAME_NOREPLACE) < 0 &&
		    errno != EEXIST && errno != ENOTEMPTY)
			rc = -errno;
		rmtree_at(ds->fd, tmp); /* gone if renamed; ours if we lost a race */
		if (rc < 0) {
			casfs__errno(rc, "cannot create %s in store '%s'", META, s->id);
			goto out;
		}
		if (sync)
			fsync(ds->fd);
		ds->meta_fd = open_dir_at(ds->fd, META);
		if (ds->meta_fd < 0) {
			rc = casfs__errno(-errno, "cannot open %s", META);
			goto out;
		}
	}
	int fd = mkopen_dir_at(ds->meta_fd, "staging", true);
	if (fd < 0) {
		rc = casfs__errno(-errno, "cannot open %s/staging in store '%s'", META, s->id);
		goto out;
	}
	__atomic_store_n(&ds->staging_fd, fd, __ATOMIC_RELEASE);
out:
	pthread_mutex_unlock(&ds->mu);
	return rc;
}

/* Returns the fd of data/ or labels/, creating the directory if asked.
 * -ENOENT (no message) if it is missing and create is false. */
static int area_fd(casfs_store *s, int *slot, const char *name, bool create)
{
	struct dir_store *ds = S(s);
	int fd = __atomic_load_n(slot, __ATOMIC_ACQUIRE);
	if (fd >= 0)
		return fd;
	pthread_mutex_lock(&ds->mu);
	fd = *slot;
	if (fd < 0) {
		fd = mkopen_dir_at(ds->fd, name, create);
		if (fd < 0) {
			int e = -errno;
			pthread_mutex_unlock(&ds->mu);
			if (e == -ENOENT)
				return e;
			return casfs__errno(e, "cannot open %s/ of store '%s'", name, s->id);
		}
		if (create && !casfs__nosync(s))
			fsync(ds->fd);
		__atomic_store_n(slot, fd, __ATOMIC_RELEASE);
	}
	pthread_mutex_unlock(&ds->mu);
	return fd;
}

static int data_fd(casfs_store *s, bool create)
{
	return area_fd(s, &S(s)->data_fd, "data", create);
}

static int labels_fd(casfs_store *s, bool create)
{
	return area_fd(s, &S(s)->labels_fd, "labels", create);
}

/* Opens (creating if asked) a subdirectory of .casfs/. */
static int meta_subdir(casfs_store *s, const char *name)
{
	int rc = ensure_meta(s);
	if (rc < 0)
		return rc;
	int fd = mkopen_dir_at(S(s)->meta_fd, name, true);
	if (fd < 0)
		return casfs__errno(-errno, "cannot open %s/%s", META, name);
	return fd;
}

/* ----------------------------------------------------------------- staging */

/* A staging file.  locked: the caller holds the store's lock, which a
 * cleaner takes too, and uses the file only while it holds it (a label
 * being written): no cleaner can run meanwhile, so it needs no flock of
 * its own. */
/* A fresh name for a staging file: "s.<pid>.<16 random hex digits>". */
static void stage_make_name(char *out, size_t n)
{
	snprintf(out, n, "s.%ld.", casfs__pid());
	casfs__randhex(out + strlen(out), 16);
}

static int stage_create(casfs_store *s, struct casfs_stage *st, bool locked)
{
	int rc = ensure_meta(s);
	if (rc < 0)
		return rc;
	int sfd = S(s)->staging_fd;
	for (int tries = 0; tries < 100; tries++) {
		stage_make_name(st->name, sizeof(st->name));
		int fd = openat(sfd, st->name, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
		if (fd < 0 && errno == EEXIST)
			continue;
		if (fd < 0)
			return casfs__errno(-errno, "cannot create staging file");
		if (locked) {
			st->fd = fd;
			st->synced = false;
			return 0;
		}
		/* The lock marks the file as live.  A cleaner unlinks only
		 * while holding it, so once we hold it a zero link count means
		 * we lost a race with a cleaner: start again. */
		struct stat sb;
		if (flock(fd, LOCK_EX) < 0 || fstat(fd, &sb) < 0) {
			int e = -errno;
			close(fd);
			return casfs__errno(e, "cannot lock staging file");
		}
		if (sb.st_nlink == 0) {
			close(fd);
			continue;
		}
		st->fd = fd;
		st->synced = false;
		return 0;
	}
	return casfs__err(-EIO, "cannot create a staging file");
}

/* A blob (and a label that does not exist yet) stages in an anonymous file
 * (O_TMPFILE) in .casfs/staging/ where the filesystem has them: nothing to
 * name, to lock against cleaners or to leave behind if the writer dies, and
 * published with linkat(2), which never replaces.  Elsewhere, and for a
 * label replacing another (published by a rename, which replaces), staging
 * files are named.  The test suite turns anonymous files off to exercise
 * the named ones. */
static bool staging_named_forced;

void casfs__stage_named(bool on);
void casfs__stage_named(bool on)
{
	staging_named_forced = on;
}

static pthread_once_t proc_fd_once = PTHREAD_ONCE_INIT;
static bool proc_fd_ok, empty_path_ok;

static void proc_fd_check(void)
{
	proc_fd_ok = access("/proc/self/fd", X_OK) == 0;
	/* linkat(AT_EMPTY_PATH) needs CAP_DAC_READ_SEARCH: worth trying
	 * only as root (and not then either for a thread whose fsuid is a
	 * user's: that drops it; the fallback follows). */
	empty_path_ok = geteuid() == 0;
}

/* An anonymous staging file: 0, 1 if this filesystem (or the test suite)
 * wants named ones, or -errno. */
static int stage_anonymous(casfs_store *s, struct casfs_stage *st)
{
	struct dir_store *ds = S(s);
	pthread_once(&proc_fd_once, proc_fd_check);
	if (staging_named_forced || !proc_fd_ok || __atomic_load_n(&ds->named_staging, __ATOMIC_RELAXED))
		return 1;
	int rc = ensure_meta(s);
	if (rc < 0)
		return rc;
	int fd = openat(ds->staging_fd, ".", O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
	if (fd >= 0) {
		st->name[0] = '\0';
		st->fd = fd;
		st->synced = false;
		return 0;
	}
	if (errno != EOPNOTSUPP && errno != EISDIR && errno != EINVAL)
		return casfs__errno(-errno, "cannot create staging file");
	__atomic_store_n(&ds->named_staging, true, __ATOMIC_RELAXED);
	return 1;
}

static int dir_stage_create(casfs_store *s, struct casfs_stage *st)
{
	int rc = stage_anonymous(s, st);
	return rc == 1 ? stage_create(s, st, false) : rc;
}

/* Links an anonymous staging file in as dfd/name: directly where the
 * caller may (CAP_DAC_READ_SEARCH), else through /proc/self/fd.  0 or
 * -1 with errno set. */
static int link_anonymous(int fd, int dfd, const char *name)
{
	if (empty_path_ok) {
		if (linkat(fd, "", dfd, name, AT_EMPTY_PATH) == 0)
			return 0;
		if (errno != ENOENT)
			return -1;
	}
	char path[32];
	snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
	return linkat(AT_FDCWD, path, dfd, name, AT_SYMLINK_FOLLOW);
}

/* Gives an anonymous staging file a name in staging/ (to be renamed over
 * something: only a rename replaces).  0 or -errno, st unchanged on error. */
static int stage_name(casfs_store *s, struct casfs_stage *st)
{
	char name[sizeof(st->name)];
	stage_make_name(name, sizeof(name));
	if (link_anonymous(st->fd, S(s)->staging_fd, name) < 0)
		return -errno;
	memcpy(st->name, name, sizeof(name));
	return 0;
}

static void dir_stage_discard(casfs_store *s, struct casfs_stage *st)
{
	if (st->fd < 0)
		return;
	if (st->name[0])
		unlinkat(S(s)->staging_fd, st->name, 0);
	close(st->fd);
	st->fd = -1;
}

static int dir_lock(casfs_store *s, bool exclusive, int *token);
static void dir_unlock(casfs_store *s, int token);

static int dir_stage_clean(casfs_store *s, unsigned *removed)
{
	unsigned count = 0;
	int sfd = S(s)->staging_fd;
	if (removed)
		*removed = 0;
	if (sfd < 0)
		return 0; /* nothing was ever staged */
	/* Under the store's lock: a label being written holds it and its
	 * staging file has no flock of its own (stage_create). */
	int token;
	int rc = dir_lock(s, true, &token);
	if (rc < 0)
		return rc == -EROFS ? 0 : rc; /* read-only: nothing to remove anyway */
	DIR *d = dir_stream(sfd);
	if (!d) {
		rc = casfs__errno(-errno, "cannot list staging");
		dir_unlock(s, token);
		return rc;
	}
	struct dirent *e;
	while ((e = readdir(d))) {
		if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
			continue;
		int fd = openat(sfd, e->d_name, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
		if (fd < 0) {
			if (errno == ELOOP || errno == ENXIO) /* not ours: a symlink, a socket */
				if (unlinkat(sfd, e->d_name, 0) == 0)
					count++;
			continue;
		}
		struct stat sb;
		if (fstat(fd, &sb) == 0 && S_ISDIR(sb.st_mode)) {
			close(fd);
			if (rmtree_at(sfd, e->d_name) == 0)
				count++;
			continue;
		}
		if (flock(fd, LOCK_EX | LOCK_NB) == 0) {
			if (unlinkat(sfd, e->d_name, 0) == 0)
				count++;
			else if (errno != ENOENT && rc == 0)
				rc = casfs__errno(-errno, "cannot remove staging debris %s", e->d_name);
		}
		close(fd);
	}
	closedir(d);
	dir_unlock(s, token);
	if (removed)
		*removed = count;
	return rc;
}

/* ---------------------------------------------------------------- sessions */

/* .casfs/sessions/<pid>.<random>: "start=<ns>\n", then "mark=<ns>\n" once
 * casfs_store_sync() has made the store durable (rewritten in place, fixed
 * width), flock()ed for the life of the session, removed when it ends.  One
 * that nobody holds locked was left by a process that died: what it
 * published after its mark (or its start) is suspect.  Sessions themselves
 * are always synced, whether or not the store defers its syncs. */
#define SESSION_START_LEN 26 /* "start=" + 19 digits + "\n" */

static int root_fsync(casfs_store *s, int fd)
{
	return casfs__root_nosync(s) || fsync(fd) == 0 ? 0 : casfs__errno(-errno, "fsync");
}

static int dir_session_begin(casfs_store *s, int *session, int64_t *unclean_since)
{
	*session = -1;
	*unclean_since = 0;
	int dfd = meta_subdir(s, "sessions");
	if (dfd < 0)
		return dfd;
	int rc = 0;
	DIR *d = dir_stream(dfd);
	struct dirent *e;
	while (d && (e = readdir(d))) {
		if (e->d_name[0] == '.')
			continue;
		int fd = openat(dfd, e->d_name, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
		if (fd < 0)
			continue;
		if (flock(fd, LOCK_EX | LOCK_NB) == 0) {
			char buf[64] = "";
			ssize_t n = pread(fd, buf, sizeof(buf) - 1, 0);
			long long start = 0, mark = 0;
			int got = n > 0 ? sscanf(buf, "start=%lld\nmark=%lld", &start, &mark) : 0;
			if (got >= 1 && start > 0) {
				if (got == 2 && mark > start)
					start = mark;
				if (*unclean_since == 0 || start < *unclean_since)
					*unclean_since = start;
			} else {
				*unclean_since = 1; /* unreadable: suspect everything */
			}
			unlinkat(dfd, e->d_name, 0);
		}
		close(fd);
	}
	if (d)
		closedir(d);
	char name[64], text[64];
	snprintf(name, sizeof(name), "%ld.", (long)getpid());
	casfs__randhex(name + strlen(name), 12);
	int fd = openat(dfd, name, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
	if (fd < 0 || flock(fd, LOCK_EX) < 0) {
		rc = casfs__errno(-errno, "cannot record a session in store '%s'", s->id);
	} else {
		snprintf(text, sizeof(text), "start=%019lld\n", (long long)casfs__now_ns());
		if ((rc = casfs__write_all(fd, text, strlen(text))) == 0)
			rc = root_fsync(s, fd);
		if (rc == 0) {
			*session = fd;
			fd = -1;
		}
	}
	xclose(fd);
	if (rc == 0)
		rc = root_fsync(s, dfd);
	close(dfd);
	return rc;
}

static void dir_session_end(casfs_store *s, int session)
{
	if (session < 0)
		return;
	int dfd = meta_subdir(s, "sessions");
	if (dfd >= 0) {
		/* Find our file by its inode: the fd is all we kept. */
		struct stat mine;
		DIR *d = fstat(session, &mine) == 0 ? dir_stream(dfd) : NULL;
		struct dirent *e;
		while (d && (e = readdir(d))) {
			struct stat sb;
			if (fstatat(dfd, e->d_name, &sb, AT_SYMLINK_NOFOLLOW) == 0 && sb.st_ino == mine.st_ino &&
			    sb.st_dev == mine.st_dev) {
				unlinkat(dfd, e->d_name, 0);
				root_fsync(s, dfd);
				break;
			}
		}
		if (d)
			closedir(d);
		close(dfd);
	}
	close(session);
}

/* One syncfs(2) makes every file of the filesystem durable: blobs, labels,
 * their directories and the journal.  The mark then goes into the session
 * file without a sync of its own: it becomes durable with the next sync
 * (or the filesystem's own commit), and until then the older mark, which
 * suspects more, is what a crash leaves. */
static int dir_store_sync(casfs_store *s, int session, int64_t mark)
{
	if (syncfs(S(s)->fd) < 0)
		return casfs__errno(-errno, "cannot sync store '%s'", s->id);
	if (session >= 0) {
		char text[64];
		int n = snprintf(text, sizeof(text), "mark=%019lld\n", (long long)mark);
		int rc = casfs__pwrite_all(session, text, (size_t)n, SESSION_START_LEN);
		if (rc < 0)
			return casfs__errno(rc, "cannot record a sync in the session of store '%s'", s->id);
	}
	return 0;
}

static int dir_stage_sync(casfs_store *s, struct casfs_stage *const *st, size_t n)
{
	if (casfs__nosync(s) || n == 0)
		return 0;
	if (n >= 8) {
		/* One journal commit for the whole batch. */
		if (syncfs(st[0]->fd) < 0)
			return casfs__errno(-errno, "syncfs");
	} else {
		for (size_t i = 0; i < n; i++)
			if (fdatasync(st[i]->fd) < 0)
				return casfs__errno(-errno, "fdatasync");
	}
	for (size_t i = 0; i < n; i++)
		st[i]->synced = true;
	return 0;
}

/* ------------------------------------------------------------------- blobs */

static int dir_blob_publish(casfs_store *s, struct casfs_stage *st, const char *hex)
{
	int dfd = data_fd(s, true);
	if (dfd < 0)
		return dfd == -ENOENT ? casfs__errno(dfd, "cannot create data/") : dfd;
	int sfd = S(s)->staging_fd;
	int rc = 0;
	if (fchmod(st->fd, 0444) < 0) {
		rc = casfs__errno(-errno, "chmod staging file");
		goto out;
	}
	if (!st->synced && !casfs__nosync(s)) {
		/* Not made durable because the content looked stored already:
		 * freshen that blob, or, if it went meanwhile (gc), sync this
		 * copy before it takes its place. */
		if (utimensat(dfd, hex, NULL, AT_SYMLINK_NOFOLLOW) == 0) {
			rc = 1;
			goto out;
		}
		if (fdatasync(st->fd) < 0) {
			rc = casfs__errno(-errno, "fdatasync");
			goto out;
		}
		st->synced = true;
	}
	bool anon = !st->name[0];
	for (int tries = 0; tries < 100; tries++) {
		if (anon ? link_anonymous(st->fd, dfd, hex) == 0
			 : renameat2(sfd, st->name, dfd, hex, RENAME_NOREPLACE) == 0) {
			rc = 0;
			goto out_published;
		}
		if (!anon && (errno == EINVAL || errno == ENOSYS)) {
			/* No RENAME_NOREPLACE here: link() refuses to replace too. */
			if (linkat(sfd, st->name, dfd, hex, 0) == 0) {
				unlinkat(sfd, st->name, 0);
				rc = 0;
				goto out_published;
			}
		}
		if (errno != EEXIST) {
			rc = casfs__errno(-errno, "cannot publish blob %s", hex);
			goto out;
		}
		/* Already stored: freshen it so a concurrent gc keeps it. */
		if (utimensat(dfd, hex, NULL, AT_SYMLINK_NOFOLLOW) == 0) {
			rc = 1;
			goto out;
		}
		if (errno == EACCES || errno == EPERM) {
			/* Another user's blob: replace it by our identical
			 * copy, which is fresh (an anonymous one gets a name
			 * in staging first: only a rename replaces). */
			if (anon && (rc = stage_name(s, st)) < 0) {
				casfs__errno(rc, "cannot publish blob %s", hex);
				goto out;
			}
			if (renameat(sfd, st->name, dfd, hex) == 0) {
				rc = 1;
				goto out_published;
			}
			rc = casfs__errno(-errno, "cannot publish blob %s", hex);
			goto out;
		}
		if (errno != ENOENT) {
			rc = casfs__errno(-errno, "cannot freshen blob %s", hex);
			goto out;
		}
		/* gc removed it between our two calls: publish ours. */
	}
	rc = casfs__err(-EIO, "cannot publish blob %s: it keeps changing", hex);
out:
	dir_stage_discard(s, st);
	return rc;
out_published:
	close(st->fd);
	st->fd = -1;
	return rc;
}

static int dir_publish_sync(casfs_store *s)
{
	int dfd = data_fd(s, false);
	if (dfd < 0)
		return 0;
	return maybe_fsync(s, dfd);
}

static int dir_blob_stat(casfs_store *s, const char *hex, uint64_t *size, int64_t *mtime_ns)
{
	int dfd = data_fd(s, false);
	if (dfd < 0)
		return dfd;
	struct stat sb;
	if (fstatat(dfd, hex, &sb, AT_SYMLINK_NOFOLLOW) < 0)
		return errno == ENOENT ? -ENOENT : casfs__errno(-errno, "cannot stat blob %s", hex);
	if (!S_ISREG(sb.st_mode))
		return casfs__err(-EIO, "data/%s is not a regular file", hex);
	if (size)
		*size = (uint64_t)sb.st_size;
	if (mtime_ns)
		*mtime_ns = (int64_t)sb.st_mtim.tv_sec * 1000000000LL + sb.st_mtim.tv_nsec;
	return 0;
}

static int dir_blob_open(casfs_store *s, const char *hex, int *out)
{
	int dfd = data_fd(s, false);
	if (dfd < 0)
		return dfd == -ENOENT ? casfs__err(-ENOENT, "no blob %s in store '%s'", hex, s->id) : dfd;
	int fd = openat(dfd, hex, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
	if (fd < 0) {
		if (errno == ENOENT)
			return casfs__err(-ENOENT, "no blob %s in store '%s'", hex, s->id);
		if (errno == ELOOP)
			return casfs__err(-EIO, "data/%s is a symlink, not a blob", hex);
		return casfs__errno(-errno, "cannot open blob %s", hex);
	}
	struct stat sb;
	if (fstat(fd, &sb) < 0 || !S_ISREG(sb.st_mode)) {
		close(fd);
		return casfs__err(-EIO, "data/%s is not a regular file", hex);
	}
	/* Back to blocking reads. */
	fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK);
	*out = fd;
	return 0;
}

static int dir_blob_list(casfs_store *s, bool all, casfs_name_fn fn, void *ud)
{
	int dfd = data_fd(s, false);
	if (dfd == -ENOENT)
		return 0;
	if (dfd < 0)
		return dfd;
	DIR *d = dir_stream(dfd);
	if (!d)
		return casfs__errno(-errno, "cannot list data/");
	int rc = 0;
	struct dirent *e;
	while ((e = readdir(d))) {
		if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
			continue;
		if (!all && !is_reg_entry(dfd, e))
			continue; /* a planted symlink or a directory is no blob */
		if ((rc = fn(e->d_name, ud)) != 0)
			break;
	}
	closedir(d);
	return rc;
}

static int dir_blob_delete(casfs_store *s, const char *hex, int64_t cutoff_ns, uint64_t *size)
{
	int64_t mtime;
	int rc = dir_blob_stat(s, hex, size, &mtime);
	if (rc < 0)
		return rc;
	if (mtime >= cutoff_ns)
		return -EAGAIN;
	int tfd = meta_subdir(s, "trash");
	if (tfd < 0)
		return tfd;
	int dfd = data_fd(s, false);
	char tmp[CASFS_HEX_MAX + 32];
	snprintf(tmp, sizeof(tmp), "%s.", hex);
	casfs__randhex(tmp + strlen(tmp), 12);
	if (renameat(dfd, hex, tfd, tmp) < 0) {
		rc = errno == ENOENT ? -ENOENT : casfs__errno(-errno, "cannot remove blob %s", hex);
		close(tfd);
		return rc;
	}
	/* A writer may have freshened it between our stat and the rename: it
	 * then still wants it.  (One freshening after the rename fails with
	 * ENOENT and makes that writer publish its own copy.) */
	struct stat sb;
	if (fstatat(tfd, tmp, &sb, AT_SYMLINK_NOFOLLOW) == 0 &&
	    (int64_t)sb.st_mtim.tv_sec * 1000000000LL + sb.st_mtim.tv_nsec >= cutoff_ns) {
		if (renameat2(tfd, tmp, dfd, hex, RENAME_NOREPLACE) < 0)
			unlinkat(tfd, tmp, 0);
		close(tfd);
		return -EAGAIN;
	}
	if (unlinkat(tfd, tmp, 0) < 0)
		rc = casfs__errno(-errno, "cannot delete blob %s", hex);
	close(tfd);
	return rc;
}

static int quarantine_from(casfs_store *s, int fromfd, const char *from, const char *prefix,
			   const char *name)
{
	int qfd = meta_subdir(s, "quarantine");
	if (qfd < 0)
		return qfd;
	char tmp[512];
	int n = snprintf(tmp, sizeof(tmp), "%s%.200s.%lld.", prefix, name,
			 (long long)(casfs__now_ns() / 1000000000LL));
	for (char *p = tmp; *p; p++)
		if (*p == '/')
			*p = '!';
	casfs__randhex(tmp + n, 6);
	int rc = 0;
	if (renameat(fromfd, from, qfd, tmp) < 0)
		rc = casfs__errno(-errno, "cannot quarantine %s", name);
	else
		maybe_fsync(s, qfd);
	close(qfd);
	return rc;
}

static int dir_blob_quarantine(casfs_store *s, const char *name)
{
	int dfd = data_fd(s, false);
	if (dfd < 0)
		return dfd;
	return quarantine_from(s, dfd, name, "blob.", name);
}

/* -------------------------------------------------------------------- lock */

/* While a thread holds a store's lock, no casfs writer renames or removes
 * label directories but itself, so the directory a label is in stays the
 * one it opened: it keeps the first one it opens until it unlocks (a
 * commit reads the current label, then writes the new one: one open of
 * their directory, not two).  Per thread; renames and removals forget it. */
static __thread struct held_dir {
	casfs_store *s;  /* whose lock this thread holds; NULL: none */
	int fd;          /* -1: none kept */
	size_t len;      /* of path */
	char path[CASFS_LABEL_MAX + 1]; /* the directory, below labels/ */
} held = { NULL, -1, 0, "" };

static int dir_lock(casfs_store *s, bool exclusive, int *token)
{
	(void)exclusive; /* one flock: label changes also exclude each other */
	struct dir_store *ds = S(s);
	int rc = ensure_meta(s);
	if (rc < 0)
		return rc;
	/* Processes exclude each other with the flock, the threads of this
	 * one with the mutex: the lock file stays open between holders (an
	 * open and a close less per change).  A child after fork opens its
	 * own: a flock belongs to the open file description, which it
	 * would share with its parent. */
	pthread_mutex_lock(&ds->lock_mu);
	if (ds->lock_fd >= 0 && ds->lock_pid != casfs__pid()) {
		close(ds->lock_fd);
		ds->lock_fd = -1;
	}
	if (ds->lock_fd < 0) {
		ds->lock_fd = openat(ds->meta_fd, "lock", O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0644);
		if (ds->lock_fd < 0) {
			rc = casfs__errno(-errno, "cannot open store lock");
			pthread_mutex_unlock(&ds->lock_mu);
			return rc;
		}
		ds->lock_pid = casfs__pid();
	}
	while (flock(ds->lock_fd, LOCK_EX) < 0) {
		if (errno == EINTR)
			continue;
		rc = casfs__errno(-errno, "cannot lock store");
		pthread_mutex_unlock(&ds->lock_mu);
		return rc;
	}
	*token = ds->lock_fd;
	if (!held.s) {
		held.s = s;
		held.fd = -1;
	}
	return 0;
}

static void held_forget(casfs_store *s)
{
	if (held.s == s && held.fd >= 0) {
		close(held.fd);
		held.fd = -1;
	}
}

static void dir_unlock(casfs_store *s, int token)
{
	held_forget(s);
	if (held.s == s)
		held.s = NULL;
	if (token >= 0) {
		flock(token, LOCK_UN);
		pthread_mutex_unlock(&S(s)->lock_mu);
	}
}

/* ------------------------------------------------------------------ labels */

/* Resolves the directory holding label name, one component at a time with
 * O_NOFOLLOW.  *leaf points into name.  *dirfd must be closed by the caller
 * if *owned. */
static int label_parent(casfs_store *s, const char *name, bool create, int *dirfd,
			const char **leaf, bool *owned)
{
	int base = labels_fd(s, create);
	if (base < 0)
		return base;
	int cur = base;
	*owned = false;
	const char *p = name;
	const char *slash;
	while ((slash = strchr(p, '/'))) {
		char comp[256];
		size_t n = (size_t)(slash - p);
		memcpy(comp, p, n);
		comp[n] = '\0';
		int next = mkopen_dir_at(cur, comp, create);
		int e = errno;
		if (*owned)
			close(cur);
		if (next < 0) {
			if (e == ENOENT || e == ENOTDIR || e == ELOOP)
				return create ? casfs__errno(-ENOTDIR, "label '%s': '%s' is not a label directory", name, comp) : -ENOENT;
			return casfs__errno(-e, "label '%s'", name);
		}
		cur = next;
		*owned = true;
		p = slash + 1;
	}
	*dirfd = cur;
	*leaf = p;
	return 0;
}

/* A label's directory, open, and its last component. */
struct lparent {
	int fd;
	const char *leaf;
	bool owned; /* fd is ours to close (not labels/ itself) */
};

static int lp_open(casfs_store *s, const char *name, bool create, struct lparent *lp)
{
	const char *slash = strrchr(name, '/');
	size_t len = slash ? (size_t)(slash - name) : 0;
	bool keep = slash && held.s == s; /* labels/ itself is always open */
	if (keep && held.fd >= 0 && held.len == len && !memcmp(held.path, name, len)) {
		lp->fd = held.fd;
		lp->leaf = slash + 1;
		lp->owned = false;
		return 0;
	}
	int rc = label_parent(s, name, create, &lp->fd, &lp->leaf, &lp->owned);
	if (rc == 0 && keep && lp->owned && held.fd < 0 && len < sizeof(held.path)) {
		/* Kept, never replaced while the lock is held: a caller
		 * may be using the one kept (a rename opens two). */
		memcpy(held.path, name, len);
		held.len = len;
		held.fd = lp->fd;
		lp->owned = false;
	}
	return rc;
}

static void lp_close(struct lparent *lp)
{
	if (lp->owned)
		close(lp->fd);
	lp->owned = false;
}

static int dir_label_read(casfs_store *s, const char *name, char *buf, size_t size, size_t *len)
{
	struct lparent lp;
	int rc = lp_open(s, name, false, &lp);
	if (rc < 0)
		return rc;
	int fd = openat(lp.fd, lp.leaf, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
	int e = errno;
	lp_close(&lp);
	if (fd < 0) {
		if (e == ENOENT)
			return -ENOENT;
		if (e == ELOOP)
			return casfs__err(-EINVAL, "label '%s' is a symlink, not a label file", name);
		return casfs__errno(-e, "cannot read label '%s'", name);
	}
	struct stat sb;
	if (fstat(fd, &sb) < 0) {
		rc = casfs__errno(-errno, "cannot read label '%s'", name);
	} else if (S_ISDIR(sb.st_mode)) {
		rc = casfs__err(-EISDIR, "label '%s' is a directory of labels", name);
	} else if (!S_ISREG(sb.st_mode)) {
		rc = casfs__err(-EINVAL, "label '%s' is not a regular file", name);
	} else if ((uint64_t)sb.st_size >= size) {
		rc = casfs__err(-EFBIG, "label file '%s' is too large (%lld bytes) to hold a digest",
				name, (long long)sb.st_size);
	} else {
		ssize_t n = pread(fd, buf, size - 1, 0);
		if (n < 0) {
			rc = casfs__errno(-errno, "cannot read label '%s'", name);
		} else {
			buf[n] = '\0';
			*len = (size_t)n;
		}
	}
	close(fd);
	return rc;
}

static int dir_label_write(casfs_store *s, const char *name, const char *hex, const char *cur,
			   const uint32_t *mode_in, const int64_t *mtime_ns)
{
	/* cur: the exclusive lock keeps it.  A new label is staged in an
	 * anonymous file and linked in; should something be there after all
	 * (an empty or garbled label file, a directory, another program's
	 * label), it gets a name and goes the way of a replacement: a rename.
	 * Named staging files of labels are protected by that lock (held by
	 * their writer and by cleaners), not by a flock of their own. */
	struct casfs_stage st = { .fd = -1 };
	int rc = cur[0] ? 1 : stage_anonymous(s, &st);
	if (rc == 1)
		rc = stage_create(s, &st, true);
	if (rc < 0)
		return rc;
	struct lparent lp = { .fd = -1 };
	if ((rc = casfs__write_all(st.fd, hex, strlen(hex))) < 0) {
		casfs__errno(rc, "cannot write label '%s'", name);
		goto out;
	}
	if ((rc = lp_open(s, name, true, &lp)) < 0)
		goto out;
	/* A new version keeps the permission bits of the one it replaces. */
	struct stat prev;
	mode_t mode = 0644;
	if (mode_in)
		mode = *mode_in & 07777;
	else if (fstatat(lp.fd, lp.leaf, &prev, AT_SYMLINK_NOFOLLOW) == 0 && S_ISREG(prev.st_mode))
		mode = prev.st_mode & 07777;
	struct timespec ts[2] = { { .tv_nsec = UTIME_OMIT }, { .tv_nsec = UTIME_OMIT } };
	if (mtime_ns)
		ts[1] = ns_ts(*mtime_ns);
	if (fchmod(st.fd, mode) < 0 || (mtime_ns && futimens(st.fd, ts) < 0) ||
	    (!casfs__nosync(s) && fdatasync(st.fd) < 0)) {
		rc = casfs__errno(-errno, "cannot write label '%s'", name);
		goto out;
	}
	if (!st.name[0]) {
		if (link_anonymous(st.fd, lp.fd, lp.leaf) == 0)
			goto published;
		rc = errno == EEXIST ? stage_name(s, &st) : -errno;
		if (rc < 0) {
			casfs__errno(rc, "cannot set label '%s'", name);
			goto out;
		}
	}
	if (renameat(S(s)->staging_fd, st.name, lp.fd, lp.leaf) < 0) {
		rc = -errno;
		if (rc == -EISDIR || rc == -ENOTEMPTY || rc == -EEXIST)
			rc = casfs__err(-EISDIR, "label '%s' is a directory of labels", name);
		else
			casfs__errno(rc, "cannot set label '%s'", name);
		goto out;
	}
published:
	close(st.fd);
	st.fd = -1;
	rc = maybe_fsync(s, lp.fd);
out:
	lp_close(&lp);
	dir_stage_discard(s, &st);
	return rc;
}

/* Removes a label file, or (dir) an empty directory of labels. */
static int label_unlink(casfs_store *s, const char *name, bool dir)
{
	struct lparent lp;
	int rc = lp_open(s, name, false, &lp);
	if (rc < 0)
		return rc;
	if (unlinkat(lp.fd, lp.leaf, dir ? AT_REMOVEDIR : 0) < 0) {
		rc = -errno;
		if (!dir && (rc == -EISDIR || rc == -EPERM))
			rc = casfs__err(-EISDIR, "label '%s' is a directory of labels", name);
		else if (dir && rc == -EEXIST)
			rc = -ENOTEMPTY;
		if (rc != -ENOENT && rc != -EISDIR && rc != -ENOTEMPTY && rc != -ENOTDIR)
			casfs__errno(rc, "cannot remove label %s'%s'", dir ? "directory " : "", name);
	} else {
		rc = maybe_fsync(s, lp.fd);
	}
	lp_close(&lp);
	if (dir)
		held_forget(s); /* it may have been the one kept */
	return rc;
}

static int dir_label_delete(casfs_store *s, const char *name, const char *cur)
{
	(void)cur;
	return label_unlink(s, name, false);
}

static int dir_label_rename(casfs_store *s, const char *from, const char *to)
{
	struct lparent f, t;
	int rc = lp_open(s, from, false, &f);
	if (rc < 0)
		return rc;
	if ((rc = lp_open(s, to, true, &t)) < 0) {
		lp_close(&f);
		return rc;
	}
	if (renameat(f.fd, f.leaf, t.fd, t.leaf) < 0) {
		rc = -errno;
		if (rc != -ENOENT)
			casfs__errno(rc, "cannot rename label '%s' to '%s'", from, to);
	} else {
		rc = maybe_fsync(s, t.fd);
		if (rc == 0)
			rc = maybe_fsync(s, f.fd);
	}
	lp_close(&t);
	lp_close(&f);
	held_forget(s); /* it may be under what moved */
	return rc;
}

struct walk {
	casfs_name_fn fn;
	void *ud;
	char path[CASFS_LABEL_MAX + 2];
};

static int walk_labels(struct walk *w, int dirfd, size_t plen, int depth)
{
	if (depth > 2048)
		return casfs__err(-ELOOP, "labels nested too deeply");
	DIR *d = dir_stream(dirfd);
	if (!d)
		return casfs__errno(-errno, "cannot list labels");
	int rc = 0;
	struct dirent *e;
	while ((e = readdir(d))) {
		if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
			continue;
		size_t n = strlen(e->d_name);
		if (plen + n > CASFS_LABEL_MAX)
			continue; /* no valid label name can be this long */
		memcpy(w->path + plen, e->d_name, n + 1);
		if (is_dir_entry(dirfd, e)) {
			if (plen + n + 2 > CASFS_LABEL_MAX)
				continue; /* nothing inside could have a valid name */
			int sub = open_dir_at(dirfd, e->d_name);
			if (sub < 0)
				continue;
			w->path[plen + n] = '/';
			w->path[plen + n + 1] = '\0';
			rc = walk_labels(w, sub, plen + n + 1, depth + 1);
			close(sub);
		} else if (is_reg_entry(dirfd, e)) {
			rc = w->fn(w->path, w->ud);
		}
		if (rc != 0)
			break;
	}
	closedir(d);
	return rc;
}

static int dir_label_list(casfs_store *s, casfs_name_fn fn, void *ud)
{
	int lfd = labels_fd(s, false);
	if (lfd == -ENOENT)
		return 0;
	if (lfd < 0)
		return lfd;
	struct walk *w = malloc(sizeof(*w));
	if (!w)
		return casfs__err(-ENOMEM, "out of memory");
	w->fn = fn;
	w->ud = ud;
	w->path[0] = '\0';
	int rc = walk_labels(w, lfd, 0, 0);
	free(w);
	return rc;
}

static int dir_label_quarantine(casfs_store *s, const char *name)
{
	struct lparent lp;
	int rc = lp_open(s, name, false, &lp);
	if (rc < 0)
		return rc;
	rc = quarantine_from(s, lp.fd, lp.leaf, "label.", name);
	lp_close(&lp);
	return rc;
}

static void fill_label_info(casfs_label_info *out, const struct stat *sb)
{
	memset(out, 0, sizeof(*out));
	out->is_dir = S_ISDIR(sb->st_mode);
	out->mode = sb->st_mode & 07777;
	out->mtime_ns = (int64_t)sb->st_mtim.tv_sec * 1000000000LL + sb->st_mtim.tv_nsec;
	out->ctime_ns = (int64_t)sb->st_ctim.tv_sec * 1000000000LL + sb->st_ctim.tv_nsec;
	out->uid = sb->st_uid;
	out->gid = sb->st_gid;
}

static int dir_label_stat(casfs_store *s, const char *name, casfs_label_info *out)
{
	struct stat sb;
	if (!name[0]) {
		int lfd = labels_fd(s, false);
		int fd = lfd >= 0 ? lfd : S(s)->fd; /* no labels/ yet: like the store */
		if (fstat(fd, &sb) < 0)
			return casfs__errno(-errno, "cannot stat labels/");
		fill_label_info(out, &sb);
		return 0;
	}
	/* Most lookups of names below a directory are of names that do not
	 * exist (every file created through the mount is looked up first):
	 * one fstatat of the whole path answers those.  It may follow a
	 * symlink on the way, where the label cannot exist either; anything
	 * found is looked at again one component at a time. */
	int lfd;
	if (strchr(name, '/') && held.s != s && (lfd = labels_fd(s, false)) >= 0 &&
	    fstatat(lfd, name, &sb, AT_SYMLINK_NOFOLLOW) < 0 && (errno == ENOENT || errno == ENOTDIR))
		return -ENOENT;
	struct lparent lp;
	int rc = lp_open(s, name, false, &lp);
	if (rc < 0)
		return rc;
	if (fstatat(lp.fd, lp.leaf, &sb, AT_SYMLINK_NOFOLLOW) < 0)
		rc = errno == ENOENT || errno == ENOTDIR ? -ENOENT : casfs__errno(-errno, "label '%s'", name);
	else if (!S_ISDIR(sb.st_mode) && !S_ISREG(sb.st_mode))
		rc = casfs__err(-EINVAL, "label '%s' is not a regular file", name);
	else
		fill_label_info(out, &sb);
	lp_close(&lp);
	return rc;
}

static int dir_label_setattr(casfs_store *s, const char *name, const uint32_t *mode,
			     const int64_t *mtime_ns)
{
	struct lparent lp;
	int rc = lp_open(s, name, false, &lp);
	if (rc < 0)
		return rc;
	/* Through an fd opened without following symlinks: fchmodat would
	 * follow one planted in labels/. */
	int fd = openat(lp.fd, lp.leaf, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
	if (fd < 0) {
		rc = errno == ENOENT ? -ENOENT : casfs__errno(-errno, "label '%s'", name);
	} else {
		if (mode && fchmod(fd, *mode & 07777) < 0)
			rc = casfs__errno(-errno, "cannot chmod label '%s'", name);
		if (rc == 0 && mtime_ns) {
			struct timespec ts[2] = {
				{ .tv_nsec = UTIME_OMIT },
				ns_ts(*mtime_ns),
			};
			if (futimens(fd, ts) < 0)
				rc = casfs__errno(-errno, "cannot set the time of label '%s'", name);
		}
		close(fd);
	}
	lp_close(&lp);
	return rc;
}

static int dir_label_mkdir(casfs_store *s, const char *name, uint32_t mode)
{
	struct lparent lp;
	int rc = lp_open(s, name, true, &lp);
	if (rc < 0)
		return rc;
	if (mkdirat(lp.fd, lp.leaf, mode & 07777) < 0)
		rc = errno == EEXIST ? -EEXIST : casfs__errno(-errno, "cannot make label directory '%s'", name);
	else
		rc = maybe_fsync(s, lp.fd);
	lp_close(&lp);
	return rc;
}

static int dir_label_rmdir(casfs_store *s, const char *name)
{
	return label_unlink(s, name, true);
}

/* True if the regular file dirfd/name is Theater's "no label": empty, or
 * white space alone (the same test as label_read: files over the size
 * limit are reported by get, so they are listed).  Reads only until the
 * first byte that is not white space, which for a real label is the
 * first: every file must be read, since a digest-sized file of blanks is
 * "no label" too. */
static bool blank_file_at(int dirfd, const char *name)
{
	int fd = openat(dirfd, name, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
	if (fd < 0)
		return false; /* vanished or unreadable: get reports it */
	char buf[512];
	size_t total = 0;
	bool blank = true;
	ssize_t n;
	while (blank && (n = read(fd, buf, sizeof(buf))) > 0) {
		for (ssize_t i = 0; i < n && blank; i++)
			blank = casfs__is_ws(buf[i]);
		total += (size_t)n;
		if (total > CASFS__LABEL_FILE_MAX)
			blank = false;
	}
	if (n < 0)
		blank = false; /* unreadable: listed, and get reports the error */
	close(fd);
	return blank;
}

static int dir_label_readdir(casfs_store *s, const char *dir, casfs_dirent_fn fn, void *ud)
{
	int fd;
	if (!dir[0]) {
		int lfd = labels_fd(s, false);
		if (lfd == -ENOENT)
			return 0;
		if (lfd < 0)
			return lfd;
		fd = openat(lfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	} else {
		struct lparent lp;
		int rc = lp_open(s, dir, false, &lp);
		if (rc < 0)
			return rc;
		fd = open_dir_at(lp.fd, lp.leaf);
		lp_close(&lp);
	}
	if (fd < 0)
		return errno == ENOENT || errno == ELOOP ? -ENOENT : -errno;
	DIR *d = fdopendir(fd);
	if (!d) {
		close(fd);
		return casfs__errno(-errno, "cannot list labels");
	}
	int rc = 0;
	struct dirent *e;
	while ((e = readdir(d))) {
		if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
			continue;
		int isdir = is_dir_entry(fd, e);
		if (!isdir && (!is_reg_entry(fd, e) || blank_file_at(fd, e->d_name)))
			continue; /* not a label, or Theater's "no label" */
		if ((rc = fn(e->d_name, isdir, ud)) != 0)
			break;
	}
	closedir(d);
	return rc;
}

static int dir_listing_stamp(casfs_store *s, const char *dir, int64_t *stamp)
{
	struct stat sb;
	int rc = 0;
	if (!dir || !dir[0]) {
		int fd = dir ? labels_fd(s, false) : data_fd(s, false);
		if (fd < 0)
			return fd;
		if (fstat(fd, &sb) < 0)
			return casfs__errno(-errno, "cannot stat %s/", dir ? "labels" : "data");
	} else {
		struct lparent lp;
		if ((rc = lp_open(s, dir, false, &lp)) < 0)
			return rc;
		if (fstatat(lp.fd, lp.leaf, &sb, AT_SYMLINK_NOFOLLOW) < 0)
			rc = errno == ENOENT || errno == ENOTDIR ? -ENOENT
								 : casfs__errno(-errno, "label directory '%s'", dir);
		else if (!S_ISDIR(sb.st_mode))
			rc = casfs__err(-ENOTDIR, "label '%s' is not a directory", dir);
		lp_close(&lp);
		if (rc < 0)
			return rc;
	}
	/* ctime, not mtime: touch(1) can set the mtime back. */
	*stamp = (int64_t)sb.st_ctim.tv_sec * 1000000000LL + sb.st_ctim.tv_nsec;
	return 0;
}

/* ----------------------------------------------------------------- journal */

static uint64_t journal_max(void)
{
	const char *v = getenv("CASFS_JOURNAL_MAX");
	if (v && *v) {
		unsigned long long n = strtoull(v, NULL, 10);
		if (n >= 1024)
			return n;
	}
	return JOURNAL_MAX_DEFAULT;
}

static int journal_open(casfs_store *s)
{
	return openat(S(s)->meta_fd, "journal",
		      O_WRONLY | O_APPEND | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0644);
}

/* Renames a journal grown past the limit to journal.1, under the file's
 * flock, if it still is the file this store handle appends to (another
 * process may have rotated it meanwhile) and still too long. */
/* Whether the name journal is still the file journal_fd appends to (*st:
 * its attributes); another process may have rotated it. */
static bool journal_is_ours(struct dir_store *ds, struct stat *st)
{
	return fstatat(ds->meta_fd, "journal", st, AT_SYMLINK_NOFOLLOW) == 0 &&
	       st->st_ino == ds->journal_ino && st->st_dev == ds->journal_dev;
}

static int journal_rotate(struct dir_store *ds)
{
	if (flock(ds->journal_fd, LOCK_EX) < 0)
		return -errno;
	struct stat c;
	int rc = 0;
	if (journal_is_ours(ds, &c) && (uint64_t)c.st_size > journal_max() &&
	    renameat(ds->meta_fd, "journal", ds->meta_fd, "journal.1") < 0)
		rc = -errno;
	flock(ds->journal_fd, LOCK_UN);
	return rc;
}

static int dir_journal_append(casfs_store *s, const char *line, size_t len, bool sync)
{
	struct dir_store *ds = S(s);
	int rc = ensure_meta(s);
	if (rc < 0)
		return rc;
	pthread_mutex_lock(&ds->mu);
	for (int tries = 0; tries < 3; tries++) {
		struct stat a, b;
		if (ds->journal_fd < 0) {
			if ((ds->journal_fd = journal_open(s)) < 0) {
				rc = -errno;
				break;
			}
			if (fstat(ds->journal_fd, &a) < 0) {
				rc = -errno;
				close(ds->journal_fd);
				ds->journal_fd = -1;
				break;
			}
			ds->journal_dev = a.st_dev;
			ds->journal_ino = a.st_ino;
		}
		/* Another process may have rotated the file we hold: then the
		 * name is another file (ours keeps its identity).  A line
		 * appended (O_APPEND: whole, never interleaved) just after a
		 * rotation lands at the end of journal.1, which events reads
		 * too; only rotating takes the file's flock. */
		if (!journal_is_ours(ds, &b)) {
			close(ds->journal_fd);
			ds->journal_fd = -1;
			continue;
		}
		rc = casfs__write_all(ds->journal_fd, line, len);
		if (rc == 0 && sync && !casfs__nosync(s) && fdatasync(ds->journal_fd) < 0)
			rc = -errno;
		if (rc == 0 && (uint64_t)b.st_size + len > journal_max())
			rc = journal_rotate(ds);
		break;
	}
	pthread_mutex_unlock(&ds->mu);
	return rc;
}

static int read_lines_at(int dirfd, const char *name, casfs_name_fn fn, void *ud)
{
	int fd = openat(dirfd, name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
	if (fd < 0)
		return errno == ENOENT ? 0 : casfs__errno(-errno, "cannot read journal");
	FILE *f = fdopen(fd, "r");
	if (!f) {
		close(fd);
		return casfs__err(-ENOMEM, "out of memory");
	}
	char *line = NULL;
	size_t cap = 0;
	ssize_t n;
	int rc = 0;
	while ((n = getline(&line, &cap, f)) > 0) {
		if (line[n - 1] != '\n')
			break; /* a line still being written */
		line[n - 1] = '\0';
		if ((rc = fn(line, ud)) != 0)
			break;
	}
	free(line);
	fclose(f);
	return rc;
}

static int dir_journal_read(casfs_store *s, casfs_name_fn fn, void *ud)
{
	int mfd = S(s)->meta_fd;
	if (mfd < 0)
		return 0;
	int rc = read_lines_at(mfd, "journal.1", fn, ud);
	if (rc != 0)
		return rc;
	return read_lines_at(mfd, "journal", fn, ud);
}

const struct casfs_backend casfs__backend_dir = {
	.name = "dir",
	.root_open = dir_root_open,
	.root_close = dir_root_close,
	.store_create = dir_store_create,
	.store_remove = dir_store_remove,
	.store_list = dir_store_list,
	.store_open = dir_store_open,
	.store_close = dir_store_close,
	.stage_create = dir_stage_create,
	.stage_discard = dir_stage_discard,
	.stage_clean = dir_stage_clean,
	.session_begin = dir_session_begin,
	.session_end = dir_session_end,
	.store_sync = dir_store_sync,
	.stage_sync = dir_stage_sync,
	.blob_publish = dir_blob_publish,
	.publish_sync = dir_publish_sync,
	.blob_stat = dir_blob_stat,
	.blob_open = dir_blob_open,
	.blob_list = dir_blob_list,
	.blob_delete = dir_blob_delete,
	.blob_quarantine = dir_blob_quarantine,
	.lock = dir_lock,
	.unlock = dir_unlock,
	.label_read = dir_label_read,
	.label_write = dir_label_write,
	.label_delete = dir_label_delete,
	.label_rename = dir_label_rename,
	.label_list = dir_label_list,
	.label_quarantine = dir_label_quarantine,
	.label_stat = dir_label_stat,
	.label_setattr = dir_label_setattr,
	.label_mkdir = dir_label_mkdir,
	.label_rmdir = dir_label_rmdir,
	.label_readdir = dir_label_readdir,
	.listing_stamp = dir_listing_stamp,
	.journal_append = dir_journal_append,
	.journal_read = dir_journal_read,
};
