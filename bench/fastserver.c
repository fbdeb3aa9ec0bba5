/*
 * fastserver: a trivially fast loopback server, the yardstick that shows the load
 * generator is not the bottleneck.
 *
 *   fastserver            listens on 127.0.0.1, an ephemeral port; prints the port
 *
 * One thread, epoll, non-blocking, never waits on a client.  A connection whose
 * first bytes are "GET " is HTTP: every request (up to the blank line) gets the
 * same small 200 response as sockherd's hello handler, and "Connection: close"
 * ends the connection after it.  Any other connection is the line echo protocol:
 * bytes come back as they arrive; EOF closes the connection.  It serves until
 * SIGTERM or SIGKILL (the default actions) and never exits on a client's error.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#define BUF_SIZE 8192

struct client {
    int fd;
    int http; /* -1 unknown yet, 0 echo, 1 http */
    size_t got;
    char buf[BUF_SIZE];
};

static char response[256];
static size_t response_len;

static void drop(struct client *c) {
    close(c->fd);
    free(c);
}

/* Write all of `data`; the answers are tiny, so a full socket buffer means a broken client. */
static int send_all(int fd, const char *data, size_t len) {
    while (len) {
        ssize_t n = send(fd, data, len, MSG_NOSIGNAL);
        if (n < 0) return -1;
        data += n;
        len -= (size_t)n;
    }
    return 0;
}

static void serve_http(struct client *c) {
    for (;;) {
        c->buf[c->got] = '\0';
        char *end = strstr(c->buf, "\r\n\r\n");
        if (!end) {
            if (c->got >= BUF_SIZE - 1) drop(c);
            return;
        }
        size_t used = (size_t)(end - c->buf) + 4;
        int close_after = strcasestr(c->buf, "connection: close") != NULL &&
                          strcasestr(c->buf, "connection: close") < end;
        if (send_all(c->fd, response, response_len) < 0 || close_after) {
            drop(c);
            return;
        }
        memmove(c->buf, c->buf + used, c->got - used);
        c->got -= used;
    }
}

static void on_readable(struct client *c) {
    for (;;) {
        ssize_t n = recv(c->fd, c->buf + c->got, BUF_SIZE - 1 - c->got, 0);
        if (n < 0 && (errno == EAGAIN || errno == EINTR)) return;
        if (n <= 0) {
            drop(c);
            return;
        }
        if (c->http < 0) c->http = c->got + (size_t)n >= 4 && memcmp(c->buf, "GET ", 4) == 0;
        if (!c->http) {
            if (send_all(c->fd, c->buf, (size_t)n) < 0) {
                drop(c);
                return;
            }
            continue;
        }
        c->got += (size_t)n;
        serve_http(c);
        return; /* serve_http may have freed c */
    }
}

int main(void) {
    const char body[] = "hello from pid 1\n";
    response_len = (size_t)snprintf(response, sizeof response,
                                    "HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\n"
                                    "Content-Length: %zu\r\n\r\n%s",
                                    sizeof body - 1, body);
    int listener = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;
    setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in address = {.sin_family = AF_INET, .sin_port = 0};
    inet_pton(AF_INET, "127.0.0.1", &address.sin_addr);
    socklen_t len = sizeof address;
    if (bind(listener, (struct sockaddr *)&address, sizeof address) < 0 ||
        listen(listener, 4096) < 0 || getsockname(listener, (struct sockaddr *)&address, &len) < 0) {
        perror("fastserver: listen");
        return 1;
    }
    printf("%d\n", ntohs(address.sin_port));
    fflush(stdout);
    int epfd = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = NULL};
    epoll_ctl(epfd, EPOLL_CTL_ADD, listener, &ev);
    struct epoll_event events[256];
    for (;;) {
        int n = epoll_wait(epfd, events, 256, -1);
        for (int i = 0; i < n; i++) {
            struct client *c = events[i].data.ptr;
            if (c) {
                on_readable(c);
                continue;
            }
            for (;;) {
                int fd = accept4(listener, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
                if (fd < 0) break;
                setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                c = calloc(1, sizeof *c);
                if (!c) {
                    close(fd);
                    continue;
                }
                c->fd = fd;
                c->http = -1;
                struct epoll_event cev = {.events = EPOLLIN, .data.ptr = c};
                epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &cev);
            }
        }
    }
}
