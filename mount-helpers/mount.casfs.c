/*
 * mount.casfs.c — the mount(8) helper: makes `mount -t casfs ROOT MNT -o ...`
 * and an /etc/fstab line `ROOT MNT casfs defaults 0 0` work.
 *
 * mount(8) runs it as
 *
 *     mount.casfs SOURCE MOUNTPOINT [-sfnv] [-o options] [-t type]
 *
 * It drops the options that only mean something to mount(8) and fstab
 * (auto, noauto, user, users, nouser, owner, group, _netdev, nofail,
 * defaults, comment=..., x-..., X-...), keeps every other one in order, and
 * replaces itself with
 *
 *     casfs mount SOURCE MOUNTPOINT -o KEPT
 *
 * without -f: the daemon detaches itself once the filesystem is mounted, so
 * mount(8) returns then.  casfs is found through $CASFS_BIN (ignored when
 * this runs set-uid), else where it was installed (CASFS_BINDIR, given by
 * meson), else $PATH.  Errors are one line "mount.casfs: ..." and exit 1.
 * See mount.casfs(8).
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

enum { EXIT_OK = 0, EXIT_ERR = 1 };

/* The kept options and the command line of casfs.  File-scope, so that they
 * stay reachable (no leak to report) on the paths that return. */
static char *kept;
static char *cargv[8]; /* casfs mount ROOT MNT -o OPTS -f NULL */

static const char usage_text[] =
	"usage: mount.casfs ROOT MOUNTPOINT [-sfnv] [-o opt[,opt...]] [-t type]\n"
	"  runs `casfs mount ROOT MOUNTPOINT -o opts` for mount(8) and /etc/fstab;\n"
	"  -o   casfs and mount options (ro, rw, allow_other, default_permissions,\n"
	"       sync, hash=sha256|sha1, nosuid, nodev, ...); fstab-only ones are dropped\n"
	"  -f   fake: do everything but mount;  -v  print the command it runs\n"
	"  -s, -n, -t type   accepted and ignored\n"
	"  see mount.casfs(8)\n";

static int error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int error(const char *fmt, ...)
{
	va_list ap;
	fputs("mount.casfs: ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	return EXIT_ERR;
}

/* A usage error: the message, then the one usage line. */
static int usage_error(const char *msg)
{
	fprintf(stderr, "mount.casfs: %s\n%.*s\n", msg, (int)strcspn(usage_text, "\n"), usage_text);
	return EXIT_ERR;
}

/* ------------------------------------------------------------- options */

/* True for an option that is for mount(8) and fstab only. */
static bool fstab_only(const char *o, size_t n)
{
	static const char *const words[] = {
		"auto", "noauto", "user", "users", "nouser", "owner", "group",
		"_netdev", "nofail", "defaults",
	};
	for (size_t i = 0; i < sizeof(words) / sizeof(words[0]); i++)
		if (strlen(words[i]) == n && memcmp(o, words[i], n) == 0)
			return true;
	if (n >= 8 && memcmp(o, "comment=", 8) == 0)
		return true;
	return n >= 2 && (o[0] == 'x' || o[0] == 'X') && o[1] == '-';
}

/*
 * Appends the options of list that are not fstab-only to kept (a buffer as
 * long as all the arguments together), comma-separated.  Commas inside
 * double quotes (comment="a,b") do not split, as in mount(8).
 */
static void keep_options(const char *list)
{
	size_t len = strlen(kept);
	const char *p = list;
	while (*p) {
		const char *start = p;
		bool quoted = false;
		for (; *p && (quoted || *p != ','); p++)
			if (*p == '"')
				quoted = !quoted;
		size_t n = (size_t)(p - start);
		if (n && !fstab_only(start, n)) {
			if (len)
				kept[len++] = ',';
			memcpy(kept + len, start, n);
			len += n;
			kept[len] = '\0';
		}
		if (*p == ',')
			p++;
	}
}

/* ------------------------------------------------------------- running */

/* A path casfs will not take for an option: "-x" becomes "./-x". */
static const char *as_path(const char *arg)
{
	if (arg[0] != '-')
		return arg;
	char *p = malloc(strlen(arg) + 3);
	if (!p)
		return arg;
	strcpy(p, "./");
	strcat(p, arg);
	return p;
}

static void show(const char *bin, char **argv)
{
	fprintf(stderr, "mount.casfs: running %s", bin);
	for (int i = 1; argv[i]; i++)
		fprintf(stderr, " %s", argv[i]);
	fputc('\n', stderr);
}

/* Replaces this process with casfs; returns only on failure. */
static int run_casfs(char **argv, bool verbose, bool fake)
{
	const char *env = secure_getenv("CASFS_BIN");
	const char *bin = NULL;
	bool search = false;
	if (env && *env) {
		bin = env;
	} else {
#ifdef CASFS_BINDIR
		static const char installed[] = CASFS_BINDIR "/casfs";
		if (access(installed, X_OK) == 0)
			bin = installed;
#endif
		if (!bin) {
			bin = "casfs";
			search = true;
		}
	}
	argv[0] = (char *)bin;
	if (verbose)
		show(bin, argv);
	if (fake)
		return EXIT_OK;
	if (search)
		execvp(bin, argv);
	else
		execv(bin, argv);
	if (search && errno == ENOENT)
		return error("cannot find casfs: not installed in %s and not on PATH (set CASFS_BIN)",
#ifdef CASFS_BINDIR
			     CASFS_BINDIR
#else
			     "its directory"
#endif
		);
	return error("cannot run %s: %s", bin, strerror(errno));
}

/* ---------------------------------------------------------------- main */

int main(int argc, char **argv)
{
	const char *pos[2];
	int npos = 0;
	bool verbose = false, fake = false, only_args = false;
	size_t optlen = 1;
	for (int i = 1; i < argc; i++)
		optlen += strlen(argv[i]) + 1;
	kept = calloc(optlen, 1);
	if (!kept)
		return error("out of memory");

	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];
		if (only_args || a[0] != '-' || !a[1]) {
			if (npos == 2)
				return usage_error("too many arguments");
			pos[npos++] = a;
			continue;
		}
		if (!strcmp(a, "--")) {
			only_args = true;
			continue;
		}
		if (!strcmp(a, "--help")) {
			fputs(usage_text, stdout);
			return EXIT_OK;
		}
		/* A cluster of one-letter flags: -sfnv, -vo ro, -oro. */
		for (const char *c = a + 1; *c; c++) {
			if (*c == 'o' || *c == 't' || *c == 'N') {
				const char *val = c[1] ? c + 1 : (i + 1 < argc ? argv[++i] : NULL);
				if (!val) {
					char msg[40];
					snprintf(msg, sizeof(msg), "-%c needs a value", *c);
					return usage_error(msg);
				}
				if (*c == 'o')
					keep_options(val);
				else if (*c == 'N')
					return error("-N (mounting in another namespace) is not supported");
				/* -t type: ignored, mount(8) chose this helper by it */
				break;
			}
			switch (*c) {
			case 'h':
				fputs(usage_text, stdout);
				return EXIT_OK;
			case 'v':
				verbose = true;
				break;
			case 'f':
				fake = true;
				break;
			case 's': /* sloppy: ignored; casfs still refuses unknown options */
			case 'n': /* no mtab: there is none to write */
				break;
			default: {
				char msg[40];
				snprintf(msg, sizeof(msg), "unknown option '-%c'", *c);
				return usage_error(msg);
			}
			}
		}
	}
	if (npos < 2)
		return usage_error(npos ? "no MOUNTPOINT given" : "no ROOT and MOUNTPOINT given");
	if (!pos[0][0] || !pos[1][0])
		return usage_error("ROOT and MOUNTPOINT must not be empty");

	int n = 0;
	cargv[n++] = NULL; /* the binary, set by run_casfs */
	cargv[n++] = "mount";
	cargv[n++] = (char *)as_path(pos[0]);
	cargv[n++] = (char *)as_path(pos[1]);
	if (kept[0]) {
		cargv[n++] = "-o";
		cargv[n++] = kept;
	}
	/* For tests and supervisors that want mount(8) to wait for the
	 * daemon and report its exit status. */
	const char *fg = secure_getenv("CASFS_MOUNT_FOREGROUND");
	if (fg && !strcmp(fg, "1"))
		cargv[n++] = "-f";
	cargv[n] = NULL;
	return run_casfs(cargv, verbose, fake);
}
