/*
 * main.c — `casfs mount ROOT MOUNTPOINT [-f] [-d] [-s] [-o opt,...]`:
 * parse, validate, open the root, create the FUSE session, mount,
 * daemonize, run the multithreaded loop, then tear down in reverse.
 */
#include "fs.h"
#include "fsint.h"

#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

struct fs_config fs;

void fs_log(int prio, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	if (fs.foreground) {
		fputs("casfs: ", stderr);
		vfprintf(stderr, fmt, ap);
		fputc('\n', stderr);
	} else {
		vsyslog(prio, fmt, ap);
	}
	va_end(ap);
}

static int open_store_at_start(const char *id, void *ud)
{
	(void)ud;
	struct fstore *st;
	if (fstore_get(id, &st) < 0)
		fs_log(LOG_WARNING, "store %s: %s", id, casfs_error_last());
	return 0;
}

static int usage(const char *msg)
{
	if (msg)
		fprintf(stderr, "casfs: %s\n", msg);
	fprintf(stderr,
		"usage: casfs mount ROOT MOUNTPOINT [-f] [-d] [-s] [-o opt[,opt...]]\n"
		"  -f   stay in the foreground (log to stderr)\n"
		"  -d   debug: print every request (implies -f)\n"
		"  -s   single-threaded\n"
		"  -o   ro, rw, allow_other, default_permissions, sync, commit=SECONDS,\n"
		"       hash=sha256|sha1, nopassthrough,\n"
		"       for ROOT rados:POOL[/NAMESPACE]: ceph_conf=FILE, ceph_id=NAME,\n"
		"       ceph_timeout=SECONDS, cache_dir=DIR, cache_size=SIZE,\n"
		"       and the generic mount options (nosuid, nodev, noexec, noatime, ...)\n");
	return 2;
}

/* Appends opt to the comma-separated list in *list. */
static int add_opt(char **list, const char *opt)
{
	char *n = NULL;
	if (asprintf(&n, "%s%s%s", *list ? *list : "", *list ? "," : "", opt) < 0)
		return -1;
	free(*list);
	*list = n;
	return 0;
}

/* Options of a rados: root, handed to casfs_root_open_opts. */
static const char *const root_opt_names[] = {
	"ceph_conf=", "ceph_id=", "ceph_timeout=", "cache_dir=", "cache_size=",
};
static char *root_opts[16];
static int nroot_opts;

/* Options of ours; everything else goes to libfuse and the kernel. */
static int take_opts(char *opts, char **pass)
{
	for (char *save = NULL, *o = strtok_r(opts, ",", &save); o; o = strtok_r(NULL, ",", &save)) {
		if (!*o)
			continue;
		bool root_opt = false;
		for (size_t i = 0; i < sizeof(root_opt_names) / sizeof(root_opt_names[0]); i++)
			root_opt |= !strncmp(o, root_opt_names[i], strlen(root_opt_names[i]));
		if (root_opt) {
			if (nroot_opts >= 15)
				return usage("too many -o options");
			if (!(root_opts[nroot_opts++] = strdup(o)))
				return usage("out of memory");
		} else if (!strncmp(o, "hash=", 5)) {
			if (casfs_algo_parse(&fs.new_algo, o + 5) < 0)
				return usage("-o hash= takes sha256 or sha1");
		} else if (!strcmp(o, "sync")) {
			fs.sync = true;
		} else if (!strcmp(o, "async")) {
			fs.sync = false;
		} else if (!strcmp(o, "passthrough")) {
			fs.no_passthrough = false;
		} else if (!strcmp(o, "nopassthrough")) {
			fs.no_passthrough = true;
		} else if (!strncmp(o, "commit=", 7)) {
			char *end;
			errno = 0;
			double sec = strtod(o + 7, &end);
			if (errno || end == o + 7 || *end || !(sec >= 0.001 && sec <= 3600))
				return usage("-o commit= takes seconds, from 0.001 to 3600");
			fs.commit_ns = (int64_t)(sec * 1e9);
		} else if (!strcmp(o, "ro")) {
			fs.read_only = true;
			add_opt(pass, o);
		} else if (!strcmp(o, "rw")) {
			fs.read_only = false;
			add_opt(pass, o);
		} else if (!strcmp(o, "defaults") || !strncmp(o, "fsname=", 7) ||
			   !strncmp(o, "subtype=", 8) || !strcmp(o, "relatime") ||
			   !strcmp(o, "strictatime") || !strcmp(o, "nodiratime") ||
			   !strcmp(o, "diratime") || !strcmp(o, "lazytime") ||
			   !strcmp(o, "nolazytime")) {
			/* defaults: nothing; fsname/subtype: always ours; casfs
			 * keeps no access times, so the atime words are moot
			 * (and libfuse refuses some of them). */
		} else {
			add_opt(pass, o);
		}
	}
	return 0;
}

int casfs_fs_main(int argc, char **argv)
{
	const char *root_arg = NULL, *mnt_arg = NULL;
	char *pass = NULL;
	bool single = false;
	int rc = 0;
	fs.new_algo = CASFS_SHA256;
	fs.commit_ns = 1000000000LL;
	fs.uid = getuid();
	fs.gid = getgid();
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];
		if (!strcmp(a, "-f")) {
			fs.foreground = true;
		} else if (!strcmp(a, "-d") || !strcmp(a, "--debug")) {
			fs.debug = fs.foreground = true;
		} else if (!strcmp(a, "-s")) {
			single = true;
		} else if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
			usage(NULL);
			return 0;
		} else if (!strncmp(a, "-o", 2)) {
			const char *v = a[2] ? a + 2 : (i + 1 < argc ? argv[++i] : NULL);
			if (!v)
				return usage("-o needs options");
			char *copy = strdup(v);
			if (!copy || (rc = take_opts(copy, &pass)) != 0) {
				free(copy);
				free(pass);
				return rc ? rc : 1;
			}
			free(copy);
		} else if (a[0] == '-') {
			free(pass);
			fprintf(stderr, "casfs: unknown option '%s'\n", a);
			return usage(NULL);
		} else if (!root_arg) {
			root_arg = a;
		} else if (!mnt_arg) {
			mnt_arg = a;
		} else {
			free(pass);
			return usage("too many arguments");
		}
	}
	if (!root_arg || !mnt_arg) {
		free(pass);
		return usage("mount needs ROOT and MOUNTPOINT");
	}

	char root_abs[PATH_MAX], mnt_abs[PATH_MAX];
	struct stat sb;
	bool remote = !strncmp(root_arg, "rados:", 6);
	if (remote) {
		snprintf(root_abs, sizeof(root_abs), "%s", root_arg);
	} else if (!realpath(root_arg, root_abs) || stat(root_abs, &sb) < 0 || !S_ISDIR(sb.st_mode)) {
		fprintf(stderr, "casfs: root %s is not a directory: %s\n", root_arg,
			errno ? strerror(errno) : "not a directory");
		free(pass);
		return 1;
	}
	if (!realpath(mnt_arg, mnt_abs) || stat(mnt_abs, &sb) < 0 || !S_ISDIR(sb.st_mode)) {
		fprintf(stderr, "casfs: mountpoint %s is not a directory\n", mnt_arg);
		free(pass);
		return 1;
	}
	fs.root_path = root_abs;
	fs.remote = remote;
	root_opts[nroot_opts] = NULL;
	if ((rc = casfs_root_open_opts(&fs.root, root_abs, 0, (const char *const *)root_opts)) < 0) {
		fprintf(stderr, "casfs: %s\n", casfs_error_last());
		free(pass);
		return 1;
	}
	if (remote)
		fs.root_path = (char *)casfs_root_local_dir(fs.root);
	if (remote && !fs.foreground) {
		/* librados cannot cross fork(): checked, closed, opened again
		 * in the daemon. */
		casfs_root_free(fs.root);
		fs.root = NULL;
	}

	/* fsname shows the root as the source in /proc/self/mountinfo, and
	 * subtype makes the type fuse.casfs. */
	char *fsname = NULL;
	char *esc = malloc(strlen(root_abs) * 2 + 1), *e = esc;
	for (const char *c = root_abs; esc && *c; c++) {
		if (*c == ',' || *c == '\\')
			*e++ = '\\';
		*e++ = *c;
	}
	if (esc)
		*e = '\0';
	if (!esc || asprintf(&fsname, "fsname=%s,subtype=casfs", esc) < 0) {
		fprintf(stderr, "casfs: out of memory\n");
		return 1;
	}
	free(esc);
	add_opt(&pass, fsname);
	free(fsname);

	char *fargv[8];
	int fargc = 0;
	fargv[fargc++] = "casfs";
	fargv[fargc++] = "-o";
	fargv[fargc++] = pass;
	if (fs.debug)
		fargv[fargc++] = "-d";
	fargv[fargc] = NULL;
	struct fuse_args args = FUSE_ARGS_INIT(fargc, fargv);

	int status = 1;
	if (!fs.foreground)
		openlog("casfs", LOG_PID, LOG_DAEMON);
	fs.se = fuse_session_new(&args, &casfs_fs_ops, sizeof(casfs_fs_ops), NULL);
	if (!fs.se) {
		fprintf(stderr, "casfs: cannot start the filesystem (bad -o option?)\n");
		goto out_root;
	}
	if (fuse_set_signal_handlers(fs.se) != 0)
		goto out_session;
	if (fuse_session_mount(fs.se, mnt_abs) != 0) {
		fprintf(stderr, "casfs: cannot mount on %s\n", mnt_abs);
		goto out_signals;
	}
	if ((rc = fs_kio_attach(fs.se)) != 0) {
		fprintf(stderr, "casfs: cannot set up the FUSE connection: %s\n", strerror(-rc));
		goto out_unmount;
	}
	if (fuse_daemonize(fs.foreground) != 0)
		goto out_unmount;
	if (!fs.root && casfs_root_open_opts(&fs.root, root_abs, 0, (const char *const *)root_opts) < 0) {
		fs_log(LOG_ERR, "cannot open %s: %s", root_abs, casfs_error_last());
		goto out_unmount;
	}
	if (remote)
		fs.root_path = (char *)casfs_root_local_dir(fs.root);
	/* Staging debris of writers that died (a killed daemon, a killed
	 * command) goes before anything is served. */
	casfs_store_list(fs.root, open_store_at_start, NULL);
	if (!fs.read_only && (rc = fs_flusher_start()) < 0) {
		fs_log(LOG_ERR, "cannot start the flusher thread: %s", strerror(-rc));
		goto out_unmount;
	}
	fs_log(LOG_INFO, "mounted %s on %s", root_abs, mnt_abs);
	if (single) {
		rc = fuse_session_loop(fs.se);
	} else {
		struct fuse_loop_config cfg = { .clone_fd = 0, .max_idle_threads = 16 };
		rc = fuse_session_loop_mt(fs.se, &cfg);
	}
	status = rc == 0 ? 0 : 1;
	fs_log(LOG_INFO, "unmounted %s", mnt_abs);
out_unmount:
	fuse_session_unmount(fs.se);
out_signals:
	fuse_remove_signal_handlers(fs.se);
out_session:
	fuse_session_destroy(fs.se);
out_root:
	fuse_opt_free_args(&args);
	fs_flusher_stop();
	fs_ops_teardown();
	fstore_close_all();
	casfs_root_free(fs.root);
	for (int i = 0; i < nroot_opts; i++)
		free(root_opts[i]);
	free(pass);
	if (!fs.foreground)
		closelog();
	return status;
}
