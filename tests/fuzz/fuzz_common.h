/*
 * fuzz_common.h — what the libFuzzer harnesses in tests/fuzz/ share: a
 * scratch root made once per process and removed at exit, small file
 * helpers, a descriptor-leak check, and CHECK(), which aborts (so libFuzzer
 * saves the input as a crash) when an invariant of casfs does not hold.
 *
 * Header-only on purpose: each harness is one C file compiled with the
 * library sources (see tests/fuzz/run), with nothing else to link.
 */
#ifndef CASFS_FUZZ_COMMON_H
#define CASFS_FUZZ_COMMON_H

#include "casfs.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

/* ------------------------------------------------------------- invariants */

__attribute__((noreturn, format(printf, 3, 4)))
static void fuzz_fail(const char *file, int line, const char *fmt, ...)
{
	va_list ap;
	fprintf(stderr, "\n==casfs-fuzz== invariant violated at %s:%d: ", file, line);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fprintf(stderr, "\n==casfs-fuzz== casfs_error_last(): \"%s\"\n", casfs_error_last());
	abort();
}

/* CHECK(cond, fmt, ...): abort with a message unless cond holds. */
#define CHECK(cond, ...)                                                      \
	do {                                                                  \
		if (!(cond))                                                  \
			fuzz_fail(__FILE__, __LINE__, "(" #cond ") " __VA_ARGS__); \
	} while (0)

/* Setup failures are the harness's (or the machine's) fault, not casfs's:
 * they are reported distinctly. */
#define SETUP(cond, what)                                                     \
	do {                                                                  \
		if (!(cond)) {                                                \
			fprintf(stderr, "casfs-fuzz: setup failed: %s: %s (%s)\n", \
				what, strerror(errno), casfs_error_last());   \
			exit(2);                                              \
		}                                                             \
	} while (0)

/* An errno value a caller may get back from casfs (SPEC §5 and the usual
 * file-system ones). */
static inline bool fuzz_plausible_errno(int rc)
{
	switch (-rc) {
	case EINVAL: case ENOENT: case ENAMETOOLONG: case EIO: case EFBIG:
	case EISDIR: case ENOTDIR: case EEXIST: case ESTALE: case ENOTEMPTY:
	case EPERM: case EACCES: case ELOOP: case EROFS: case ENOSPC:
		return true;
	}
	return false;
}

/* The last error message is a C string shorter than casfs's buffer. */
static inline void fuzz_check_error_text(void)
{
	const char *m = casfs_error_last();
	CHECK(m != NULL);
	CHECK(strnlen(m, 4096) < 512, "error text is %zu bytes", strnlen(m, 4096));
}

/* ---------------------------------------------------------------- strings */

/* A NUL-terminated copy of the input (the C string ends at its first NUL). */
static inline char *fuzz_cstr(const uint8_t *data, size_t size)
{
	char *s = malloc(size + 1);
	SETUP(s != NULL, "malloc");
	memcpy(s, data, size);
	s[size] = '\0';
	return s;
}

static inline bool fuzz_is_ws(unsigned char c)
{
	return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f';
}

static inline bool fuzz_is_lower_hex(const char *p, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (!((p[i] >= '0' && p[i] <= '9') || (p[i] >= 'a' && p[i] <= 'f')))
			return false;
	return true;
}

/* ------------------------------------------------------------------- files */

/* rm -rf of name under dirfd (never follows symlinks). */
static int fuzz_rmtree_at(int dirfd, const char *name)
{
	if (unlinkat(dirfd, name, 0) == 0 || errno == ENOENT)
		return 0;
	if (errno != EISDIR && errno != EPERM)
		return -errno;
	int fd = openat(dirfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	DIR *d = fdopendir(fd);
	if (!d) {
		close(fd);
		return -errno;
	}
	struct dirent *e;
	while ((e = readdir(d)))
		if (strcmp(e->d_name, ".") && strcmp(e->d_name, ".."))
			fuzz_rmtree_at(fd, e->d_name);
	closedir(d);
	return unlinkat(dirfd, name, AT_REMOVEDIR) == 0 || errno == ENOENT ? 0 : -errno;
}

/* Empties the directory path (keeps it). */
static inline void fuzz_empty_dir(const char *path)
{
	int fd = open(path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	if (fd < 0)
		return;
	DIR *d = fdopendir(fd);
	if (!d) {
		close(fd);
		return;
	}
	struct dirent *e;
	while ((e = readdir(d)))
		if (strcmp(e->d_name, ".") && strcmp(e->d_name, ".."))
			fuzz_rmtree_at(fd, e->d_name);
	closedir(d);
}

/* Writes exactly n bytes to path (created or truncated); 0 or -errno. */
static inline int fuzz_write_file(const char *path, const void *buf, size_t n)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0644);
	if (fd < 0)
		return -errno;
	const char *p = buf;
	while (n > 0) {
		ssize_t w = write(fd, p, n);
		if (w < 0 && errno == EINTR)
			continue;
		if (w < 0) {
			int e = -errno;
			close(fd);
			return e;
		}
		p += w;
		n -= (size_t)w;
	}
	close(fd);
	return 0;
}

/* mkdir -p of a relative path under base. */
static inline void fuzz_mkdirs(const char *base, const char *rel)
{
	char path[8192];
	snprintf(path, sizeof(path), "%s/%s", base, rel);
	for (char *q = path + strlen(base) + 1; *q; q++) {
		if (*q != '/')
			continue;
		*q = '\0';
		mkdir(path, 0777);
		*q = '/';
	}
	mkdir(path, 0777);
}

/* ----------------------------------------------------------------- scratch */

static char fuzz_scratch[4096];

static void fuzz_scratch_remove(void)
{
	if (!fuzz_scratch[0])
		return;
	fuzz_rmtree_at(AT_FDCWD, fuzz_scratch);
	fuzz_scratch[0] = '\0';
}

/* Makes a fresh scratch directory under $FUZZ_SCRATCH, $TMPDIR or /tmp,
 * removed when the process exits normally (libFuzzer exits through exit()
 * at -max_total_time/-runs; a crash leaves it for tests/fuzz/run to clear). */
static inline const char *fuzz_scratch_dir(const char *tag)
{
	if (fuzz_scratch[0])
		return fuzz_scratch;
	const char *base = getenv("FUZZ_SCRATCH");
	if (!base || !*base)
		base = getenv("TMPDIR");
	if (!base || !*base)
		base = "/tmp";
	mkdir(base, 0777);
	snprintf(fuzz_scratch, sizeof(fuzz_scratch), "%s/casfs-%s.XXXXXX", base, tag);
	SETUP(mkdtemp(fuzz_scratch) != NULL, "mkdtemp");
	atexit(fuzz_scratch_remove);
	return fuzz_scratch;
}

/* -------------------------------------------------------------- fd leaks */

/* Number of open descriptors of this process. */
static inline int fuzz_count_fds(void)
{
	DIR *d = opendir("/proc/self/fd");
	if (!d)
		return -1;
	int n = 0;
	struct dirent *e;
	while ((e = readdir(d)))
		if (e->d_name[0] != '.')
			n++;
	closedir(d);
	return n - 1; /* the one opendir holds */
}

/* Call with the count taken before an iteration that must leave no
 * descriptor behind (every store handle it opened is freed). */
static inline void fuzz_check_fds(int before)
{
	if (before < 0)
		return;
	int now = fuzz_count_fds();
	CHECK(now == before, "descriptor leak: %d open before the call, %d after", before, now);
}

#endif
