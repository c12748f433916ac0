/*
 * tap.h — a tiny TAP producer for the C unit tests (meson test, protocol
 * 'tap'), plus helpers to make and remove scratch roots.
 */
#ifndef CASFS_TAP_H
#define CASFS_TAP_H

#include <casfs.h>

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static int tap_n, tap_failed;

static void tap_result(int ok, const char *file, int line, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));
static void tap_result(int ok, const char *file, int line, const char *fmt, ...)
{
	va_list ap;
	printf("%s %d - ", ok ? "ok" : "not ok", ++tap_n);
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	printf("\n");
	if (!ok) {
		tap_failed++;
		printf("#   at %s:%d (last casfs error: %s)\n", file, line, casfs_error_last());
	}
	fflush(stdout);
}

#define OK(cond, ...) tap_result(!!(cond), __FILE__, __LINE__, __VA_ARGS__)
/* Checks an int result against an expected value. */
#define IS(got, want, what)                                                              \
	do {                                                                             \
		long long g_ = (long long)(got), w_ = (long long)(want);                 \
		tap_result(g_ == w_, __FILE__, __LINE__, "%s (got %lld, want %lld)", what, g_, w_); \
	} while (0)
#define STR_IS(got, want, what)                                                          \
	do {                                                                             \
		const char *g_ = (got), *w_ = (want);                                    \
		tap_result(g_ && w_ && strcmp(g_, w_) == 0, __FILE__, __LINE__, "%s ('%s' vs '%s')", \
			   what, g_ ? g_ : "(null)", w_ ? w_ : "(null)");                \
	} while (0)

static int tap_done(void)
{
	printf("1..%d\n", tap_n);
	return tap_failed ? 1 : 0;
}

__attribute__((unused)) static int rm_one(const char *p, const struct stat *sb, int flag, struct FTW *ftw)
{
	(void)sb;
	(void)flag;
	(void)ftw;
	return remove(p);
}

__attribute__((unused)) static void rm_rf(const char *path)
{
	nftw(path, rm_one, 64, FTW_DEPTH | FTW_PHYS);
}

/* A fresh scratch directory (under $TMPDIR or /tmp); free with rm_rf. */
__attribute__((unused)) static char *scratch_dir(void)
{
	const char *t = getenv("TMPDIR");
	char *p;
	if (asprintf(&p, "%s/casfs-test.XXXXXX", t && *t ? t : "/tmp") < 0 || !mkdtemp(p)) {
		perror("mkdtemp");
		exit(99);
	}
	return p;
}

/* Writes a whole file (creating or truncating it). */
__attribute__((unused)) static int write_file(const char *path, const void *buf, size_t n)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0)
		return -errno;
	ssize_t w = write(fd, buf, n);
	close(fd);
	return w == (ssize_t)n ? 0 : -EIO;
}

/* Reads a whole small file into buf (NUL-terminated); returns its length. */
__attribute__((unused)) static ssize_t read_file(const char *path, char *buf, size_t size)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	ssize_t n = read(fd, buf, size - 1);
	close(fd);
	if (n >= 0)
		buf[n] = '\0';
	return n;
}

__attribute__((unused)) static int count_entries(const char *path)
{
	char cmd[4096];
	snprintf(cmd, sizeof(cmd), "find '%s' -mindepth 1 | wc -l", path);
	FILE *f = popen(cmd, "r");
	int n = -1;
	if (f) {
		if (fscanf(f, "%d", &n) != 1)
			n = -1;
		pclose(f);
	}
	return n;
}

#endif
