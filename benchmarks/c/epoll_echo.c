/* epoll_echo.c - a minimal C epoll TCP echo server, the ceiling for the loopback benchmarks.
 *
 * Usage: epoll_echo [--host 127.0.0.1] [--port 0]
 * Prints "listening on HOST:PORT", serves until SIGTERM/SIGINT, exits 0.
 * Level-triggered epoll, non-blocking sockets, one 64 KiB read buffer; data that cannot be
 * written at once is kept per connection and the connection stops reading until it drains.
 *
 * Build: gcc -O2 -o epoll_echo epoll_echo.c
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#define BUFSZ 65536

struct conn {
    int fd;
    char *pending;
    size_t plen, poff;
};

static volatile sig_atomic_t stop_flag = 0;
static void on_signal(int sig) { (void)sig; stop_flag = 1; }

static void close_conn(int ep, struct conn *c) {
    epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    free(c->pending);
    free(c);
}

int main(int argc, char **argv) {
    const char *host = "127.0.0.1";
    int port = 0;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--host")) host = argv[i + 1];
        else if (!strcmp(argv[i], "--port")) port = atoi(argv[i + 1]);
    }
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0) { rl.rlim_cur = rl.rlim_max; setrlimit(RLIMIT_NOFILE, &rl); }
    struct sigaction sa = {0};
    sa.sa_handler = on_signal; /* no SA_RESTART: epoll_wait returns EINTR */
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    int lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0), one = 1;
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons(port)};
    if (inet_pton(AF_INET, host, &addr.sin_addr) != 1) { fprintf(stderr, "bad address\n"); return 2; }
    if (bind(lfd, (struct sockaddr *)&addr, sizeof addr) < 0 || listen(lfd, 4096) < 0) {
        perror("epoll_echo: bind/listen");
        return 2;
    }
    socklen_t alen = sizeof addr;
    getsockname(lfd, (struct sockaddr *)&addr, &alen);
    printf("listening on %s:%d\n", host, ntohs(addr.sin_port));
    fflush(stdout);

    int ep = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = NULL};
    epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &ev);
    static char buf[BUFSZ];
    struct epoll_event evs[1024];
    while (!stop_flag) {
        int n = epoll_wait(ep, evs, 1024, -1);
        for (int i = 0; i < n; i++) {
            struct conn *c = evs[i].data.ptr;
            if (c == NULL) {
                for (;;) {
                    int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK);
                    if (fd < 0) break;
                    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                    c = calloc(1, sizeof *c);
                    c->fd = fd;
                    struct epoll_event cev = {.events = EPOLLIN, .data.ptr = c};
                    epoll_ctl(ep, EPOLL_CTL_ADD, fd, &cev);
                }
                continue;
            }
            if (c->pending) { /* writable: drain what is left */
                ssize_t w = send(c->fd, c->pending + c->poff, c->plen - c->poff, MSG_NOSIGNAL);
                if (w < 0 && errno != EAGAIN) { close_conn(ep, c); continue; }
                if (w > 0) c->poff += w;
                if (c->poff == c->plen) {
                    free(c->pending);
                    c->pending = NULL;
                    struct epoll_event cev = {.events = EPOLLIN, .data.ptr = c};
                    epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &cev);
                }
                continue;
            }
            ssize_t r = recv(c->fd, buf, BUFSZ, 0);
            if (r == 0 || (r < 0 && errno != EAGAIN && errno != EINTR)) { close_conn(ep, c); continue; }
            if (r < 0) continue;
            ssize_t w = send(c->fd, buf, r, MSG_NOSIGNAL);
            if (w < 0 && errno != EAGAIN) { close_conn(ep, c); continue; }
            if (w < 0) w = 0;
            if (w < r) {
                c->plen = r - w;
                c->poff = 0;
                c->pending = malloc(c->plen);
                memcpy(c->pending, buf + w, c->plen);
                struct epoll_event cev = {.events = EPOLLOUT, .data.ptr = c};
                epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &cev);
            }
        }
    }
    return 0;
}
