/* loadgen.c - an epoll load generator for TCP echo servers (loopback benchmarks).
 *
 * Modes (all duration-bounded, single-threaded, non-blocking, level-triggered epoll):
 *   pingpong  --conns N --size M     each connection sends one M-byte message and waits for
 *                                    its echo before sending the next; counts round trips.
 *   bulk      --conns K --size CHUNK each stream keeps up to --window bytes in flight, reads
 *                                    the echo back and verifies every byte; counts MB echoed.
 *   connrate  --conns C --size M     C concurrent slots: connect, send M bytes, read the echo,
 *                                    close; counts completed connections.
 *   idle      --conns N              opens N connections, prints "ready", then holds them open
 *                                    until SIGTERM/SIGINT or --seconds passes.
 *
 * For the measuring modes it warms up for --warmup seconds, prints "measuring" on stdout,
 * measures for --seconds, then prints one JSON object with its own CPU use (getrusage) over
 * the measured window.  Exit status 0 on success, 1 on errors.
 *
 * Build: gcc -O2 -o loadgen loadgen.c
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/sendfile.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#define PATTERN_PERIOD 251
#define MAX_EVENTS 1024

static const char *opt_host = "127.0.0.1";
static int opt_port = 0;
static const char *opt_mode = "pingpong";
static int opt_conns = 64;
static int opt_size = 64;
static double opt_seconds = 2.0;
static double opt_warmup = 0.5;
static long opt_window = 256 * 1024;
static int opt_verify = 4;      /* bulk: copy out and check every Nth read; discard the rest */
static int opt_sendfile = 1;    /* bulk: send from a memfd with sendfile (no user copy) */

static volatile sig_atomic_t stop_flag = 0;
static struct sockaddr_in server_addr;
static unsigned char *pattern; /* pattern[i] = i % PATTERN_PERIOD */
static long errors = 0;
static long long report_extra = -1; /* bulk: bytes verified in the measured window */

static void on_signal(int sig) { (void)sig; stop_flag = 1; }

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static double cpu_seconds(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_utime.tv_sec + ru.ru_utime.tv_usec * 1e-6 + ru.ru_stime.tv_sec +
           ru.ru_stime.tv_usec * 1e-6;
}

static void die(const char *what) {
    fprintf(stderr, "loadgen: %s: %s\n", what, strerror(errno));
    exit(1);
}

static void raise_nofile(void) {
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
}

static int open_conn(int nonblocking_connect) {
    int fd = socket(AF_INET, SOCK_STREAM | (nonblocking_connect ? SOCK_NONBLOCK : 0), 0);
    if (fd < 0) die("socket");
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (connect(fd, (struct sockaddr *)&server_addr, sizeof server_addr) < 0) {
        if (!(nonblocking_connect && errno == EINPROGRESS)) die("connect");
    }
    if (!nonblocking_connect) fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    return fd;
}

/* ---- measurement window ------------------------------------------------------------- */

static double t_start, t_measure, t_end, cpu_measure;
static int measuring = 0;

static void window_init(void) {
    t_start = now();
    t_measure = t_start + opt_warmup;
    t_end = t_measure + opt_seconds;
    measuring = opt_warmup <= 0;
    if (measuring) {
        cpu_measure = cpu_seconds();
        printf("measuring\n");
        fflush(stdout);
    }
}

/* Returns 1 when the run is over; switches to measuring after the warm-up. */
static int window_tick(double t, long *counter, long long *bytes) {
    if (!measuring && t >= t_measure) {
        measuring = 1;
        *counter = 0;
        if (bytes) *bytes = 0;
        t_measure = t;
        t_end = t + opt_seconds;
        cpu_measure = cpu_seconds();
        printf("measuring\n");
        fflush(stdout);
    }
    return t >= t_end || stop_flag;
}

static void report(long count, long long bytes, double t_done) {
    double wall = t_done - t_measure;
    double cpu = cpu_seconds() - cpu_measure;
    printf("{\"mode\": \"%s\", \"conns\": %d, \"size\": %d, \"wall\": %.6f, \"count\": %ld, "
           "\"bytes\": %lld, \"rate\": %.3f, \"mb_per_s\": %.3f, \"cpu\": %.6f, "
           "\"cpu_frac\": %.4f, \"errors\": %ld, \"verified_bytes\": %lld, "
           "\"generator\": \"c\"}\n",
           opt_mode, opt_conns, opt_size, wall, count, bytes, wall > 0 ? count / wall : 0.0,
           wall > 0 ? bytes / wall / 1e6 : 0.0, cpu, wall > 0 ? cpu / wall : 0.0, errors,
           report_extra);
    fflush(stdout);
}

/* ---- pingpong ------------------------------------------------------------------------- */

static int run_pingpong(void) {
    int ep = epoll_create1(0);
    int n = opt_conns, size = opt_size;
    int *fds = calloc(n, sizeof *fds);
    int *got = calloc(n, sizeof *got);
    char *msg = malloc(size), *buf = malloc(size > 65536 ? size : 65536);
    memset(msg, 'x', size);
    for (int i = 0; i < n; i++) {
        fds[i] = open_conn(0);
        struct epoll_event ev = {.events = EPOLLIN, .data.u32 = i};
        if (epoll_ctl(ep, EPOLL_CTL_ADD, fds[i], &ev) < 0) die("epoll_ctl");
    }
    long count = 0;
    window_init();
    for (int i = 0; i < n; i++)
        if (send(fds[i], msg, size, MSG_NOSIGNAL) != size) die("send");
    struct epoll_event evs[MAX_EVENTS];
    for (;;) {
        int k = epoll_wait(ep, evs, MAX_EVENTS, 100);
        if (k < 0 && errno != EINTR) die("epoll_wait");
        for (int j = 0; j < k; j++) {
            int i = evs[j].data.u32;
            ssize_t r = recv(fds[i], buf, size - got[i], 0);
            if (r <= 0) {
                if (r < 0 && (errno == EAGAIN || errno == EINTR)) continue;
                errors++;
                fprintf(stderr, "loadgen: connection %d closed by the server\n", i);
                epoll_ctl(ep, EPOLL_CTL_DEL, fds[i], NULL);
                continue;
            }
            got[i] += r;
            if (got[i] == size) {
                got[i] = 0;
                count++;
                if (send(fds[i], msg, size, MSG_NOSIGNAL) != size) errors++;
            }
        }
        if (window_tick(now(), &count, NULL)) break;
    }
    report(count, (long long)count * size, now());
    return errors ? 1 : 0;
}

/* ---- bulk ------------------------------------------------------------------------------- */

static int run_bulk(void) {
    int ep = epoll_create1(0);
    int n = opt_conns, chunk = opt_size;
    int *fds = calloc(n, sizeof *fds);
    long long *sent = calloc(n, sizeof *sent), *recvd = calloc(n, sizeof *recvd);
    unsigned *mask = calloc(n, sizeof *mask);
    char *buf = malloc(chunk);
    long long verified = 0;
    long reads = 0;
    int memfd = -1;
    if (opt_sendfile) {
        /* The sender's pattern lives in a memfd: sendfile() hands its pages to TCP without
           copying, so the generator spends its CPU on the protocol, not on memcpy. */
        memfd = memfd_create("loadgen-pattern", 0);
        size_t plen = PATTERN_PERIOD + (size_t)(chunk > opt_window ? chunk : opt_window);
        if (memfd < 0 || write(memfd, pattern, plen) != (ssize_t)plen) die("memfd");
    }
    for (int i = 0; i < n; i++) {
        fds[i] = open_conn(0);
        int sz = 1 << 20;
        setsockopt(fds[i], SOL_SOCKET, SO_RCVBUF, &sz, sizeof sz);
        mask[i] = EPOLLIN | EPOLLOUT;
        struct epoll_event ev = {.events = mask[i], .data.u32 = i};
        if (epoll_ctl(ep, EPOLL_CTL_ADD, fds[i], &ev) < 0) die("epoll_ctl");
    }
    long count = 0;
    long long bytes = 0;
    window_init();
    struct epoll_event evs[MAX_EVENTS];
    for (;;) {
        int k = epoll_wait(ep, evs, MAX_EVENTS, 100);
        if (k < 0 && errno != EINTR) die("epoll_wait");
        for (int j = 0; j < k; j++) {
            int i = evs[j].data.u32;
            if (evs[j].events & (EPOLLIN | EPOLLERR | EPOLLHUP)) {
                /* Every opt_verify-th read is copied out and compared with the pattern; the
                   others are discarded in the kernel (MSG_TRUNC), counted but not copied. */
                int check = opt_verify > 0 && reads % opt_verify == 0;
                ssize_t r = recv(fds[i], buf, chunk, check ? 0 : MSG_TRUNC);
                if (r > 0) {
                    reads++;
                    if (check) {
                        if (memcmp(buf, pattern + recvd[i] % PATTERN_PERIOD, r) != 0) {
                            errors++;
                            fprintf(stderr, "loadgen: stream %d: echoed data differs\n", i);
                        }
                        if (measuring) verified += r;
                    }
                    recvd[i] += r;
                    bytes += r;
                    count++;
                } else if (r == 0 || (errno != EAGAIN && errno != EINTR)) {
                    errors++;
                    fprintf(stderr, "loadgen: stream %d closed by the server\n", i);
                    epoll_ctl(ep, EPOLL_CTL_DEL, fds[i], NULL);
                    continue;
                }
            }
            long long room = opt_window - (sent[i] - recvd[i]);
            if ((evs[j].events & EPOLLOUT) && room > 0) {
                size_t len = room < chunk ? (size_t)room : (size_t)chunk;
                ssize_t w;
                if (memfd >= 0) {
                    off_t off = sent[i] % PATTERN_PERIOD;
                    w = sendfile(fds[i], memfd, &off, len);
                } else {
                    w = send(fds[i], pattern + sent[i] % PATTERN_PERIOD, len, MSG_NOSIGNAL);
                }
                if (w > 0) sent[i] += w;
                else if (w < 0 && errno != EAGAIN && errno != EINTR) errors++;
            }
            unsigned want = EPOLLIN | (opt_window - (sent[i] - recvd[i]) > 0 ? EPOLLOUT : 0);
            if (want != mask[i]) {
                mask[i] = want;
                struct epoll_event ev = {.events = want, .data.u32 = i};
                epoll_ctl(ep, EPOLL_CTL_MOD, fds[i], &ev);
            }
        }
        if (window_tick(now(), &count, &bytes)) break;
    }
    report_extra = verified;
    report(count, bytes, now());
    return errors ? 1 : 0;
}

/* ---- connrate --------------------------------------------------------------------------- */

enum { CONNECTING, WAITING };

static int run_connrate(void) {
    int ep = epoll_create1(0);
    int n = opt_conns, size = opt_size;
    int *fds = calloc(n, sizeof *fds), *state = calloc(n, sizeof *state);
    int *got = calloc(n, sizeof *got);
    char *msg = malloc(size), *buf = malloc(size);
    memset(msg, 'c', size);
    long count = 0;
    window_init();
    for (int i = 0; i < n; i++) {
        fds[i] = open_conn(1);
        state[i] = CONNECTING;
        struct epoll_event ev = {.events = EPOLLOUT, .data.u32 = i};
        if (epoll_ctl(ep, EPOLL_CTL_ADD, fds[i], &ev) < 0) die("epoll_ctl");
    }
    struct epoll_event evs[MAX_EVENTS];
    for (;;) {
        int k = epoll_wait(ep, evs, MAX_EVENTS, 100);
        if (k < 0 && errno != EINTR) die("epoll_wait");
        for (int j = 0; j < k; j++) {
            int i = evs[j].data.u32, done = 0, failed = 0;
            if (state[i] == CONNECTING) {
                int err = 0;
                socklen_t len = sizeof err;
                getsockopt(fds[i], SOL_SOCKET, SO_ERROR, &err, &len);
                if (err || send(fds[i], msg, size, MSG_NOSIGNAL) != size) {
                    failed = 1;
                } else {
                    state[i] = WAITING;
                    got[i] = 0;
                    struct epoll_event ev = {.events = EPOLLIN, .data.u32 = i};
                    epoll_ctl(ep, EPOLL_CTL_MOD, fds[i], &ev);
                }
            } else {
                ssize_t r = recv(fds[i], buf, size - got[i], 0);
                if (r > 0) {
                    got[i] += r;
                    done = got[i] == size;
                } else if (r == 0 || (errno != EAGAIN && errno != EINTR)) {
                    failed = 1;
                }
            }
            if (done || failed) {
                if (failed) errors++;
                else count++;
                close(fds[i]);
                fds[i] = open_conn(1);
                state[i] = CONNECTING;
                struct epoll_event ev = {.events = EPOLLOUT, .data.u32 = i};
                if (epoll_ctl(ep, EPOLL_CTL_ADD, fds[i], &ev) < 0) die("epoll_ctl");
            }
        }
        if (window_tick(now(), &count, NULL)) break;
    }
    report(count, (long long)count * size, now());
    /* A few failed connections among many are reported, not fatal. */
    return errors > count / 100 ? 1 : 0;
}

/* ---- idle ------------------------------------------------------------------------------- */

static int run_idle(void) {
    int n = opt_conns;
    for (int i = 0; i < n && !stop_flag; i++) open_conn(0);
    printf("ready %d\n", n);
    fflush(stdout);
    double end = now() + opt_seconds;
    while (!stop_flag && now() < end) usleep(20000);
    return 0;
}

int main(int argc, char **argv) {
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!v) { fprintf(stderr, "loadgen: %s needs a value\n", a); return 2; }
        if (!strcmp(a, "--host")) opt_host = v;
        else if (!strcmp(a, "--port")) opt_port = atoi(v);
        else if (!strcmp(a, "--mode")) opt_mode = v;
        else if (!strcmp(a, "--conns")) opt_conns = atoi(v);
        else if (!strcmp(a, "--size")) opt_size = atoi(v);
        else if (!strcmp(a, "--seconds")) opt_seconds = atof(v);
        else if (!strcmp(a, "--warmup")) opt_warmup = atof(v);
        else if (!strcmp(a, "--window")) opt_window = atol(v);
        else if (!strcmp(a, "--verify")) opt_verify = atoi(v);
        else if (!strcmp(a, "--sendfile")) opt_sendfile = atoi(v);
        else { fprintf(stderr, "loadgen: unknown option %s\n", a); return 2; }
        i++;
    }
    if (opt_port <= 0 || opt_conns <= 0 || opt_size <= 0 || opt_seconds <= 0) {
        fprintf(stderr, "loadgen: need --port, and positive --conns, --size, --seconds\n");
        return 2;
    }
    signal(SIGTERM, on_signal);
    signal(SIGINT, on_signal);
    signal(SIGPIPE, SIG_IGN);
    raise_nofile();
    memset(&server_addr, 0, sizeof server_addr);
    server_addr.sin_family = AF_INET;
    server_addr.sin_port = htons(opt_port);
    if (inet_pton(AF_INET, opt_host, &server_addr.sin_addr) != 1) {
        fprintf(stderr, "loadgen: bad IPv4 address %s\n", opt_host);
        return 2;
    }
    size_t plen = PATTERN_PERIOD + (size_t)(opt_size > opt_window ? opt_size : opt_window);
    pattern = malloc(plen);
    for (size_t i = 0; i < plen; i++) pattern[i] = (unsigned char)(i % PATTERN_PERIOD);
    if (!strcmp(opt_mode, "pingpong")) return run_pingpong();
    if (!strcmp(opt_mode, "bulk")) return run_bulk();
    if (!strcmp(opt_mode, "connrate")) return run_connrate();
    if (!strcmp(opt_mode, "idle")) return run_idle();
    fprintf(stderr, "loadgen: unknown mode %s\n", opt_mode);
    return 2;
}
