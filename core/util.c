/*
 * util.c — small pieces every part of libcasfs uses: the per-thread last
 * error, SHA-256/SHA-1 through OpenSSL, name validation (SPEC §2) and I/O
 * loops.
 */
#include "internal.h"

#include <fcntl.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>
#include <sys/random.h>
#include <unistd.h>

/* ------------------------------------------------------------------ errors */

static __thread char last_error[512];

const char *casfs_error_last(void)
{
	return last_error;
}

void casfs_error_clear(void)
{
	last_error[0] = '\0';
}

int casfs__err(int code, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(last_error, sizeof(last_error), fmt, ap);
	va_end(ap);
	return code;
}

int casfs__errno(int code, const char *fmt, ...)
{
	char msg[400];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	snprintf(last_error, sizeof(last_error), "%s: %s", msg, strerror(-code));
	return code;
}

/* ---------------------------------------------------------------- algorithms */

const char *casfs_algo_name(casfs_algo algo)
{
	switch (algo) {
	case CASFS_SHA256: return "sha256";
	case CASFS_SHA1: return "sha1";
	}
	return NULL;
}

int casfs_algo_parse(casfs_algo *out, const char *name)
{
	if (name && strcmp(name, "sha256") == 0) {
		*out = CASFS_SHA256;
		return 0;
	}
	if (name && strcmp(name, "sha1") == 0) {
		*out = CASFS_SHA1;
		return 0;
	}
	return casfs__err(-EINVAL, "unknown hash algorithm '%s' (use sha256 or sha1)",
			  name ? name : "");
}

size_t casfs_algo_hexlen(casfs_algo algo)
{
	return algo == CASFS_SHA1 ? 40 : 64;
}

/* ----------------------------------------------------------------- hashing */

struct casfs_hash {
	EVP_MD_CTX *ctx;
	const EVP_MD *md;
};

static const EVP_MD *algo_md(casfs_algo algo)
{
	return algo == CASFS_SHA1 ? EVP_sha1() : EVP_sha256();
}

casfs_hash *casfs__hash_new(casfs_algo algo)
{
	casfs_hash *h = calloc(1, sizeof(*h));
	if (!h)
		return NULL;
	h->md = algo_md(algo);
	h->ctx = EVP_MD_CTX_new();
	if (!h->ctx || !EVP_DigestInit_ex(h->ctx, h->md, NULL)) {
		casfs__hash_free(h);
		return NULL;
	}
	return h;
}

void casfs__hash_free(casfs_hash *h)
{
	if (!h)
		return;
	EVP_MD_CTX_free(h->ctx);
	free(h);
}

int casfs__hash_reset(casfs_hash *h)
{
	if (!EVP_DigestInit_ex(h->ctx, h->md, NULL))
		return casfs__err(-EIO, "hash initialisation failed");
	return 0;
}

int casfs__hash_update(casfs_hash *h, const void *buf, size_t n)
{
	if (n && !EVP_DigestUpdate(h->ctx, buf, n))
		return casfs__err(-EIO, "hashing failed");
	return 0;
}

static void to_hex(const unsigned char *md, unsigned n, char *hex)
{
	static const char digits[] = "0123456789abcdef";
	for (unsigned i = 0; i < n; i++) {
		hex[2 * i] = digits[md[i] >> 4];
		hex[2 * i + 1] = digits[md[i] & 15];
	}
	hex[2 * n] = '\0';
}

int casfs__hash_final(casfs_hash *h, char hex[CASFS_HEX_MAX])
{
	unsigned char md[EVP_MAX_MD_SIZE];
	unsigned n = 0;
	if (!EVP_DigestFinal_ex(h->ctx, md, &n))
		return casfs__err(-EIO, "hashing failed");
	to_hex(md, n, hex);
	return 0;
}

int casfs__hash_buf(casfs_algo algo, const void *buf, size_t n,
		    char hex[CASFS_HEX_MAX])
{
	unsigned char md[EVP_MAX_MD_SIZE];
	unsigned len = 0;
	if (!EVP_Digest(buf, n, md, &len, algo_md(algo), NULL))
		return casfs__err(-EIO, "hashing failed");
	to_hex(md, len, hex);
	return 0;
}

int casfs__hash_fd(casfs_algo algo, int fd, char hex[CASFS_HEX_MAX],
		   uint64_t *size)
{
	enum { CHUNK = 1 << 20 };
	casfs_hash *h = casfs__hash_new(algo);
	char *buf = malloc(CHUNK);
	uint64_t off = 0;
	int rc = 0;
	if (!h || !buf) {
		rc = casfs__err(-ENOMEM, "out of memory");
		goto out;
	}
	for (;;) {
		ssize_t n = pread(fd, buf, CHUNK, (off_t)off);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			rc = casfs__errno(-errno, "read");
			goto out;
		}
		if (n == 0)
			break;
		if ((rc = casfs__hash_update(h, buf, (size_t)n)) < 0)
			goto out;
		off += (uint64_t)n;
	}
	rc = casfs__hash_final(h, hex);
	if (size)
		*size = off;
out:
	free(buf);
	casfs__hash_free(h);
	return rc;
}

/* -------------------------------------------------------------- validation */

static int check_component(const char *what, const char *p, size_t n)
{
	if (n == 0)
		return casfs__err(-EINVAL, "invalid %s: empty name component", what);
	if (n > 255)
		return casfs__err(-ENAMETOOLONG, "invalid %s: a component is longer than 255 bytes", what);
	if ((n == 1 && p[0] == '.') || (n == 2 && p[0] == '.' && p[1] == '.'))
		return casfs__err(-EINVAL, "invalid %s: '.' and '..' are not allowed", what);
	return 0;
}

int casfs_id_check(const char *id)
{
	if (!id)
		return casfs__err(-EINVAL, "invalid store id: none given");
	size_t n = strlen(id);
	int rc = check_component("store id", id, n);
	if (rc < 0)
		return rc;
	if (strchr(id, '/'))
		return casfs__err(-EINVAL, "invalid store id '%s': '/' is not allowed", id);
	if (id[0] == '.')
		return casfs__err(-EINVAL, "invalid store id '%s': may not start with '.'", id);
	return 0;
}

int casfs_label_check(const char *name)
{
	if (!name)
		return casfs__err(-EINVAL, "invalid label: none given");
	size_t n = strlen(name);
	if (n > CASFS_LABEL_MAX)
		return casfs__err(-ENAMETOOLONG, "invalid label: longer than %d bytes", CASFS_LABEL_MAX);
	const char *p = name;
	for (;;) {
		const char *slash = strchr(p, '/');
		size_t len = slash ? (size_t)(slash - p) : strlen(p);
		int rc = check_component("label", p, len);
		if (rc < 0)
			return rc;
		if (!slash)
			break;
		p = slash + 1;
	}
	return 0;
}

int casfs_digest_check(casfs_algo algo, const char *hex)
{
	size_t want = casfs_algo_hexlen(algo);
	if (!hex)
		return casfs__err(-EINVAL, "invalid digest: none given");
	size_t n = strnlen(hex, want + 1);
	if (n != want)
		return casfs__err(-EINVAL, "invalid digest '%.80s': a %s digest has %zu hex digits",
				  hex, casfs_algo_name(algo), want);
	for (size_t i = 0; i < n; i++) {
		char c = hex[i];
		if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f')))
			return casfs__err(-EINVAL, "invalid digest '%s': only lowercase hex digits are allowed", hex);
	}
	return 0;
}

/* -------------------------------------------------------------------- misc */

bool casfs__is_ws(char c)
{
	return c == ' ' || c == '\n' || c == '\r' || c == '\t' || c == '\v' || c == '\f';
}

void casfs__trim(char *buf, size_t *len)
{
	size_t n = *len, start = 0;
	while (n > 0 && casfs__is_ws(buf[n - 1]))
		n--;
	while (start < n && casfs__is_ws(buf[start]))
		start++;
	if (start)
		memmove(buf, buf + start, n - start);
	n -= start;
	buf[n] = '\0';
	*len = n;
}

int64_t casfs__now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* Random bytes and the process id are asked for on every staging file
 * (two per file written through the mount), and system calls are not
 * cheap: each thread draws random bytes 256 at a time, and the pid is
 * remembered.  A fork makes both stale: the child must not repeat its
 * parent's names, so a fork bumps a generation that every thread checks. */
static unsigned fork_gen;
static long cached_pid;
static pthread_once_t fork_once = PTHREAD_ONCE_INIT;

static void after_fork(void)
{
	__atomic_add_fetch(&fork_gen, 1, __ATOMIC_RELAXED);
	__atomic_store_n(&cached_pid, 0L, __ATOMIC_RELAXED);
}

static void watch_forks(void)
{
	pthread_atfork(NULL, NULL, after_fork);
}

long casfs__pid(void)
{
	pthread_once(&fork_once, watch_forks);
	long pid = __atomic_load_n(&cached_pid, __ATOMIC_RELAXED);
	if (!pid) {
		pid = (long)getpid();
		__atomic_store_n(&cached_pid, pid, __ATOMIC_RELAXED);
	}
	return pid;
}

static void random_bytes(unsigned char *raw, size_t bytes)
{
	static __thread unsigned char pool[256];
	static __thread size_t left;
	static __thread unsigned gen;
	pthread_once(&fork_once, watch_forks);
	unsigned g = __atomic_load_n(&fork_gen, __ATOMIC_RELAXED);
	if (g != gen) {
		left = 0; /* drawn before a fork: the parent has them too */
		gen = g;
	}
	while (bytes > 0) {
		if (!left) {
			if (getrandom(pool, sizeof(pool), 0) == (ssize_t)sizeof(pool)) {
				left = sizeof(pool);
			} else {
				/* getrandom cannot fail for small requests after
				 * boot; fall back to something unique anyway. */
				uint64_t x = (uint64_t)casfs__now_ns() ^ ((uint64_t)getpid() << 32) ^
					     (uint64_t)(uintptr_t)&left;
				for (size_t i = 0; i < sizeof(pool); i++) {
					x = x * 6364136223846793005ULL + 1442695040888963407ULL;
					pool[i] = (unsigned char)(x >> 56);
				}
				left = sizeof(pool);
			}
		}
		size_t take = bytes < left ? bytes : left;
		memcpy(raw, pool + sizeof(pool) - left, take); /* each byte once */
		left -= take;
		raw += take;
		bytes -= take;
	}
}

void casfs__randhex(char *out, size_t n)
{
	static const char digits[] = "0123456789abcdef";
	unsigned char raw[64];
	size_t bytes = (n + 1) / 2;
	if (bytes > sizeof(raw))
		bytes = sizeof(raw), n = 2 * sizeof(raw);
	random_bytes(raw, bytes);
	for (size_t i = 0; i < n; i++)
		out[i] = digits[(raw[i / 2] >> ((i & 1) ? 0 : 4)) & 15];
	out[n] = '\0';
}

int casfs__write_all(int fd, const void *buf, size_t n)
{
	const char *p = buf;
	while (n > 0) {
		ssize_t w = write(fd, p, n);
		if (w < 0 && errno == EINTR)
			continue;
		if (w < 0)
			return -errno;
		p += w;
		n -= (size_t)w;
	}
	return 0;
}

int casfs__pwrite_all(int fd, const void *buf, size_t n, uint64_t off)
{
	const char *p = buf;
	while (n > 0) {
		ssize_t w = pwrite(fd, p, n, (off_t)off);
		if (w < 0 && errno == EINTR)
			continue;
		if (w < 0)
			return -errno;
		p += w;
		n -= (size_t)w;
		off += (uint64_t)w;
	}
	return 0;
}
