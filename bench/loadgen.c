/*
 * loadgen: a loopback load generator for sockherd's benchmarks.
 *
 *   loadgen --port P [--host 127.0.0.1] [--mode echo|http] [--concurrency C]
 *           [--duration S] [--requests N] [--warmup S] [--per-conn K] [--timeout S]
 *           [--spread-sources 1|0]
 *
 * One thread, epoll, non-blocking sockets.  C connections are kept in flight at all
 * times; each one runs requests back to back:
 *
 *   echo: send a 64-byte line plus "\n", read the same 65 bytes back.
 *   http: send "GET / HTTP/1.1", read the status line, headers and Content-Length body.
 *
 * --per-conn K: requests per connection before it is closed and a new one opened;
 * 1 (the default) is a new connection per request, K > 1 is keep-alive.  In echo
 * mode the client half-closes after its last request and waits for the server's
 * EOF (the echo handler reads until EOF).  In http mode a response that says
 * "Connection: close" (or an HTTP/1.0 one without keep-alive) ends the connection
 * early, as a browser would.
 *
 * Measurement: requests started during the first --warmup seconds are not
 * recorded; then the window lasts --duration seconds or until --requests
 * requests have started, whichever comes first.  After the window no request
 * is started; those in flight finish or time out (--timeout, default 10 s, from
 * the moment each started).  Latency runs from the connect() (first request of
 * a connection) or the send (later requests) to the last byte of the answer.
 *
 * Output: one JSON line with requests, rps (answers that arrived inside the
 * window per second of window), p50/p99/p999/max/mean latency in microseconds,
 * and errors by kind: refused, reset, timeout, closed (EOF before the whole
 * answer), bad (a wrong answer), other.  Only 127.0.0.0/8 may be a target; everything is bounded in
 * count and time (a hard stop at warmup + duration + timeout + 1 s).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_CONCURRENCY 4096
#define BUF_SIZE 8192

enum mode { MODE_ECHO, MODE_HTTP };
enum phase { IDLE, SENDING, READING, CLOSING };
enum error_kind { ERR_REFUSED, ERR_RESET, ERR_TIMEOUT, ERR_CLOSED, ERR_BAD, ERR_OTHER, ERR_KINDS };
static const char *ERROR_NAMES[ERR_KINDS] = {"refused", "reset",  "timeout",
                                             "closed",  "bad",    "other"};

struct conn {
    int fd;
    enum phase phase;
    int done_on_conn;     /* requests finished on this connection */
    int keep;             /* http: the server lets the connection live on */
    double started;       /* when the request in hand started (connect or send) */
    int recorded;         /* the request in hand is inside the window */
    int connect_error;    /* errno of a connect() that failed at once */
    size_t sent;
    size_t got;
    char buf[BUF_SIZE];
};

static struct {
    const char *host;
    int port;
    enum mode mode;
    int concurrency;
    double duration;
    long requests;
    double warmup;
    int per_conn;
    double timeout;
    int spread;
} opt = {"127.0.0.1", 0, MODE_ECHO, 16, 5.0, 0, 0.0, 1, 10.0, 1};

static struct sockaddr_in target;
static char request_bytes[256];
static size_t request_len;
static int epfd;
static double t0;
static long started_in_window;
static long ok_in_window;
static double last_finish;
static long errors[ERR_KINDS];
static uint32_t *latencies;
static size_t latency_count, latency_cap;

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void die(const char *what) {
    fprintf(stderr, "loadgen: %s\n", what);
    exit(2);
}

static void record_latency(double seconds) {
    if (latency_count == latency_cap) {
        latency_cap = latency_cap ? latency_cap * 2 : 65536;
        latencies = realloc(latencies, latency_cap * sizeof *latencies);
        if (!latencies) die("out of memory");
    }
    double us = seconds * 1e6;
    latencies[latency_count++] = us > 4e9 ? 4000000000u : (uint32_t)us;
}

static int window_open(double t) {
    if (t < t0 + opt.warmup) return 1;
    if (t >= t0 + opt.warmup + opt.duration) return 0;
    return !(opt.requests && started_in_window >= opt.requests);
}

static void close_conn(struct conn *c, int abort) {
    if (c->fd < 0) return;
    if (abort) {
        struct linger lg = {1, 0};
        setsockopt(c->fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    }
    close(c->fd); /* also removes it from the epoll set */
    c->fd = -1;
    c->phase = IDLE;
}

/* Rotate the source address over 127.0.0.2-127.0.0.254: each has its own ephemeral ports,
 * so the TIME_WAIT sockets that a client-closes-first protocol leaves behind do not make
 * connect() search a crowded port range (which would make the generator the bottleneck). */
static void spread_source(int fd) {
    static unsigned next_host;
    if (!opt.spread) return;
    int one = 1;
    setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
    struct sockaddr_in source = {.sin_family = AF_INET, .sin_port = 0};
    source.sin_addr.s_addr = htonl((127u << 24) | (2 + next_host++ % 253));
    bind(fd, (struct sockaddr *)&source, sizeof source); /* on failure: the default source */
}

static void begin_request(struct conn *c, double t) {
    c->started = t;
    c->sent = c->got = 0;
    c->recorded = t >= t0 + opt.warmup;
    if (c->recorded) started_in_window++;
}

static void open_conn(struct conn *c, double t) {
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c->fd < 0) die("socket() failed (raise the fd limit?)");
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    spread_source(c->fd);
    c->done_on_conn = 0;
    c->keep = 1;
    begin_request(c, t);
    c->phase = SENDING; /* send() waits for the connection, and reports a failed one */
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT | EPOLLET, .data.ptr = c};
    if (epoll_ctl(epfd, EPOLL_CTL_ADD, c->fd, &ev) < 0) die("epoll_ctl failed");
    if (connect(c->fd, (struct sockaddr *)&target, sizeof target) < 0 && errno != EINPROGRESS)
        c->connect_error = errno; /* reported by drive() when epoll wakes it */
    else
        c->connect_error = 0;
}

static enum error_kind classify(int err) {
    switch (err) {
    case ECONNREFUSED: return ERR_REFUSED;
    case ECONNRESET:
    case EPIPE:
    case ECONNABORTED: return ERR_RESET;
    case ETIMEDOUT: return ERR_TIMEOUT;
    default: return ERR_OTHER;
    }
}

static void fail(struct conn *c, enum error_kind kind) {
    if (c->recorded) errors[kind]++;
    close_conn(c, 1);
}

/* Start the next request on c (a new connection if needed), or leave it idle. */
static void next(struct conn *c, double t) {
    if (!window_open(t)) {
        if (c->fd >= 0) close_conn(c, 0);
        c->phase = IDLE;
        return;
    }
    if (c->fd < 0) {
        open_conn(c, t);
        return;
    }
    begin_request(c, t);
    c->phase = SENDING; /* the caller's drive() loop sends at once */
}

static void finish_request(struct conn *c, double t) {
    if (c->recorded) {
        record_latency(t - c->started);
        last_finish = t;
        if (t <= t0 + opt.warmup + opt.duration) ok_in_window++;
    }
    c->done_on_conn++;
}

/* The answer so far: 1 complete, 0 incomplete, -1 malformed. */
static int answer_complete(struct conn *c) {
    if (opt.mode == MODE_ECHO) {
        if (c->got > request_len) return -1;
        if (memcmp(c->buf, request_bytes, c->got) != 0) return -1;
        return c->got == request_len;
    }
    c->buf[c->got] = '\0';
    char *end = strstr(c->buf, "\r\n\r\n");
    if (!end) return c->got >= BUF_SIZE - 1 ? -1 : 0;
    if (strncmp(c->buf, "HTTP/1.", 7) != 0 || strncmp(c->buf + 8, " 200", 4) != 0) return -1;
    size_t header_len = (size_t)(end - c->buf) + 4;
    long length = -1;
    int http10 = c->buf[7] == '0', keep_alive = 0, close_ = 0;
    for (char *line = strstr(c->buf, "\r\n"); line && line < end; line = strstr(line + 2, "\r\n")) {
        char *h = line + 2;
        if (strncasecmp(h, "content-length:", 15) == 0) length = strtol(h + 15, NULL, 10);
        if (strncasecmp(h, "connection:", 11) == 0) {
            if (strcasestr(h, "close") && strcasestr(h, "close") < strstr(h, "\r\n")) close_ = 1;
            if (strcasestr(h, "keep-alive") && strcasestr(h, "keep-alive") < strstr(h, "\r\n"))
                keep_alive = 1;
        }
    }
    if (length < 0) return -1;
    if (c->got < header_len + (size_t)length) return 0;
    if (c->got > header_len + (size_t)length) return -1;
    c->keep = !(close_ || (http10 && !keep_alive));
    return 1;
}

static void end_connection(struct conn *c, double t) {
    if (opt.mode == MODE_ECHO) { /* the echo handler serves until EOF: half-close, await its EOF */
        shutdown(c->fd, SHUT_WR);
        c->phase = CLOSING;
        return;
    }
    close_conn(c, 0);
    next(c, t);
}

/* One step on an error: count it, drop the connection, start over. */
static void error_step(struct conn *c, enum error_kind kind, double t) {
    fail(c, kind);
    next(c, t);
}

/* Advance c as far as its socket allows (edge-triggered: until EAGAIN). */
static void drive(struct conn *c, double t) {
    while (c->fd >= 0) {
        if (c->connect_error) {
            int err = c->connect_error;
            c->connect_error = 0;
            error_step(c, classify(err), t);
            return; /* a fresh connection waits for its own event */
        }
        if (c->phase == SENDING) {
            ssize_t n = send(c->fd, request_bytes + c->sent, request_len - c->sent, MSG_NOSIGNAL);
            if (n < 0) {
                if (errno == EAGAIN || errno == EINTR) return;
                error_step(c, classify(errno), t);
                return;
            }
            c->sent += (size_t)n;
            if (c->sent == request_len) c->phase = READING;
            continue;
        }
        if (c->phase == CLOSING) {
            char sink[256];
            ssize_t n = recv(c->fd, sink, sizeof sink, 0);
            if (n < 0 && (errno == EAGAIN || errno == EINTR)) return;
            if (n == 0) {
                close_conn(c, 0);
                next(c, t);
            } else {
                error_step(c, n > 0 ? ERR_BAD : classify(errno), t);
            }
            return;
        }
        /* READING */
        ssize_t n = recv(c->fd, c->buf + c->got, BUF_SIZE - 1 - c->got, 0);
        if (n < 0) {
            if (errno == EAGAIN || errno == EINTR) return;
            error_step(c, classify(errno), t);
            return;
        }
        if (n == 0) { /* EOF before the whole answer */
            error_step(c, ERR_CLOSED, t);
            return;
        }
        c->got += (size_t)n;
        int complete = answer_complete(c);
        if (complete < 0) {
            error_step(c, ERR_BAD, t);
            return;
        }
        if (!complete) continue;
        finish_request(c, t);
        if (c->done_on_conn >= opt.per_conn || !c->keep || !window_open(t)) {
            end_connection(c, t);
            if (c->phase != CLOSING) return; /* closed; a new connection waits for its event */
            continue;
        }
        next(c, t);
        if (c->phase == IDLE) return;
    }
}

static void expire(struct conn *conns, double t) {
    for (int i = 0; i < opt.concurrency; i++) {
        struct conn *c = &conns[i];
        if (c->fd >= 0 && t - c->started > opt.timeout) {
            if (c->phase == CLOSING) {
                close_conn(c, 1); /* the answer came; only the server's EOF is late */
                if (c->recorded) errors[ERR_TIMEOUT]++;
            } else {
                fail(c, ERR_TIMEOUT);
            }
            next(c, t);
            drive(c, t);
        }
    }
}

static int compare_u32(const void *a, const void *b) {
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return (x > y) - (x < y);
}

static uint32_t percentile(double p) {
    if (!latency_count) return 0;
    size_t rank = (size_t)(p * latency_count + 0.999999);
    if (rank < 1) rank = 1;
    if (rank > latency_count) rank = latency_count;
    return latencies[rank - 1];
}

static void parse_args(int argc, char **argv) {
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!v) die("every option takes a value");
        if (!strcmp(a, "--host")) opt.host = v;
        else if (!strcmp(a, "--port")) opt.port = atoi(v);
        else if (!strcmp(a, "--mode")) {
            if (!strcmp(v, "echo")) opt.mode = MODE_ECHO;
            else if (!strcmp(v, "http")) opt.mode = MODE_HTTP;
            else die("--mode is echo or http");
        } else if (!strcmp(a, "--concurrency")) opt.concurrency = atoi(v);
        else if (!strcmp(a, "--duration")) opt.duration = atof(v);
        else if (!strcmp(a, "--requests")) opt.requests = atol(v);
        else if (!strcmp(a, "--warmup")) opt.warmup = atof(v);
        else if (!strcmp(a, "--per-conn")) opt.per_conn = atoi(v);
        else if (!strcmp(a, "--timeout")) opt.timeout = atof(v);
        else if (!strcmp(a, "--spread-sources")) opt.spread = atoi(v);
        else die("unknown option");
        i++;
    }
    if (opt.port <= 0 || opt.port > 65535) die("--port is required");
    if (opt.concurrency < 1 || opt.concurrency > MAX_CONCURRENCY) die("bad --concurrency");
    if (opt.duration <= 0 || opt.duration > 600) die("--duration must be in (0, 600]");
    if (opt.warmup < 0 || opt.warmup > 60) die("--warmup must be in [0, 60]");
    if (opt.timeout <= 0 || opt.timeout > 60) die("--timeout must be in (0, 60]");
    if (opt.per_conn < 1) die("--per-conn must be >= 1");
    memset(&target, 0, sizeof target);
    target.sin_family = AF_INET;
    target.sin_port = htons((uint16_t)opt.port);
    if (inet_pton(AF_INET, opt.host, &target.sin_addr) != 1) die("--host must be an IPv4 address");
    if ((ntohl(target.sin_addr.s_addr) >> 24) != 127) die("only 127.0.0.0/8 may be a target");
}

int main(int argc, char **argv) {
    parse_args(argc, argv);
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    if (opt.mode == MODE_ECHO) {
        memset(request_bytes, 'x', 64);
        request_bytes[64] = '\n';
        request_len = 65;
    } else {
        request_len = (size_t)snprintf(request_bytes, sizeof request_bytes,
                                       "GET / HTTP/1.1\r\nHost: %s:%d\r\n%s\r\n", opt.host,
                                       opt.port, opt.per_conn > 1 ? "" : "Connection: close\r\n");
    }
    epfd = epoll_create1(EPOLL_CLOEXEC);
    if (epfd < 0) die("epoll_create1 failed");
    struct conn *conns = calloc((size_t)opt.concurrency, sizeof *conns);
    if (!conns) die("out of memory");
    t0 = now();
    for (int i = 0; i < opt.concurrency; i++) {
        conns[i].fd = -1;
        open_conn(&conns[i], t0);
    }
    double hard_stop = t0 + opt.warmup + opt.duration + opt.timeout + 1.0;
    double last_expiry_scan = t0;
    struct epoll_event events[256];
    for (;;) {
        double t = now();
        int busy = 0;
        for (int i = 0; i < opt.concurrency; i++) busy |= conns[i].fd >= 0;
        if (!busy || t > hard_stop) break;
        int n = epoll_wait(epfd, events, 256, 10);
        t = now();
        for (int i = 0; i < n; i++) {
            struct conn *c = events[i].data.ptr;
            if (c->fd < 0) continue;
            drive(c, t);
        }
        if (t - last_expiry_scan > 0.01) {
            expire(conns, t);
            last_expiry_scan = t;
        }
    }
    for (int i = 0; i < opt.concurrency; i++) {
        if (conns[i].fd >= 0) {
            if (conns[i].recorded && conns[i].phase != CLOSING) errors[ERR_TIMEOUT]++;
            close_conn(&conns[i], 1);
        }
    }
    qsort(latencies, latency_count, sizeof *latencies, compare_u32);
    double sum = 0;
    for (size_t i = 0; i < latency_count; i++) sum += latencies[i];
    /* Bounded by count: the window ends with the last answer; by time: it is --duration. */
    double window = opt.duration, rps;
    if (opt.requests && started_in_window >= opt.requests && last_finish > t0 + opt.warmup)
        rps = latency_count / (last_finish - t0 - opt.warmup);
    else
        rps = ok_in_window / window;
    printf("{\"requests\": %zu, \"rps\": %.1f, \"p50_us\": %u, \"p99_us\": %u, \"p999_us\": %u, "
           "\"max_us\": %u, \"mean_us\": %.1f, \"errors\": {",
           latency_count, rps, percentile(0.50), percentile(0.99),
           percentile(0.999), latency_count ? latencies[latency_count - 1] : 0,
           latency_count ? sum / latency_count : 0.0);
    for (int k = 0; k < ERR_KINDS; k++)
        printf("%s\"%s\": %ld", k ? ", " : "", ERROR_NAMES[k], errors[k]);
    printf("}}\n");
    return 0;
}
