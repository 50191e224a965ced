/*
 * The reconnect storm's load generator: one process, one epoll loop, OpenSSL,
 * each device with its own certificate and key.
 *
 * Why C: on two cores the generator shares the machine with the server it
 * measures, and a generator in Python spends about as much CPU per TLS
 * handshake as the server does, so past the server's capacity it takes the
 * cores the server needs and the figure measures the generator. Here a
 * handshake costs the client its share of the cryptography and little more.
 *
 * Built and run by benchmarks/bench_storm.py:
 *     storm_client PLAN
 * PLAN is a text file of "name value" lines (port, ca, mode, rate, seconds,
 * timeout, concurrency, retry_scale) and one "device CERT KEY" line per
 * device. Prints one JSON object, the same fields as the Python generator
 * (benchmarks/_storm_client.py), which keeps the slow-client attack.
 *
 * Every check-in is a new TLS 1.3 connection (a sleepy device reconnects
 * every time), verifying the server against the CA and the name "localhost".
 * Modes:
 *   storm  every device at once, at most `concurrency` sockets open, until
 *          each has been answered 200 once; a device turned away waits what
 *          Retry-After says, else the agent's jittered backoff
 *          (homing.agent.pacing.next_delay), both times retry_scale;
 *   closed `concurrency` devices back to back for `seconds`;
 *   rate   open-loop arrivals at `rate` per second for `seconds`, each a
 *          different device, each given `timeout` seconds.
 * requests_per_connection N sends N check-ins on each connection (kept
 * alive); 0 sends none: the handshake alone, closed once the server's
 * session ticket is in (outcome "handshake").
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

enum state { FREE, CONNECTING, HANDSHAKE, TICKET, WRITING, READING, CLOSED };

typedef struct {
    X509 *cert;
    STACK_OF(X509) *chain;
    EVP_PKEY *key;
    SSL_SESSION *session; /* the device's last session ticket, with `resume` */
} identity;

typedef struct conn {
    int fd;
    enum state state;
    SSL *ssl;
    int device;
    double started, deadline; /* of the request under way */
    int left;                 /* requests still to send on this connection */
    int ticket;               /* a session ticket came on this connection */
    size_t sent, got, answer_size;
    char head[2048];
    struct conn *next_free;
} conn;

typedef struct {
    double at;
    int device;
} wake;

static struct {
    int port;
    char ca[4096], mode[16];
    double rate, seconds, timeout, retry_scale;
    int concurrency, requests_per_connection, resume, warmup;
    int server_pids[16], server_pid_count;
    identity *devices;
    int count;
} plan = {.retry_scale = 1.0, .timeout = 10.0, .concurrency = 128, .requests_per_connection = 1};

static SSL_CTX *context;
static int epoll_fd;
static conn *pool;
static conn *free_list;
static int pool_size, pool_used, active;
static char request[512], kept_request[512];
static size_t request_len, kept_request_len;
static long full_handshakes, resumed_handshakes;

/* Outcomes, counted by name ("200", "429", "timeout", "connection_error:..."). */
static struct {
    char name[48];
    long count;
} outcomes[64];
static int outcome_kinds;

static void count(const char *name) {
    for (int i = 0; i < outcome_kinds; i++)
        if (strcmp(outcomes[i].name, name) == 0) {
            outcomes[i].count++;
            return;
        }
    if (outcome_kinds < 64) {
        snprintf(outcomes[outcome_kinds].name, sizeof outcomes[0].name, "%s", name);
        outcomes[outcome_kinds++].count = 1;
    }
}

static long counted(const char *name) {
    for (int i = 0; i < outcome_kinds; i++)
        if (strcmp(outcomes[i].name, name) == 0) return outcomes[i].count;
    return 0;
}

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

static double cpu_at_start;

static double cpu(void) {
    struct rusage u;
    getrusage(RUSAGE_SELF, &u);
    return (double)u.ru_utime.tv_sec + (double)u.ru_utime.tv_usec / 1e6 +
           (double)u.ru_stime.tv_sec + (double)u.ru_stime.tv_usec / 1e6 - cpu_at_start;
}

/* CPU seconds the server's processes (plan lines "server_pid") have used so far. */
static double server_cpu(void) {
    double total = 0;
    long ticks = sysconf(_SC_CLK_TCK);
    for (int i = 0; i < plan.server_pid_count; i++) {
        char path[64], text[1024];
        snprintf(path, sizeof path, "/proc/%d/stat", plan.server_pids[i]);
        FILE *f = fopen(path, "r");
        if (!f) continue;
        size_t n = fread(text, 1, sizeof text - 1, f);
        fclose(f);
        text[n] = 0;
        char *after = strrchr(text, ')');
        unsigned long utime = 0, stime = 0;
        if (after && sscanf(after + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu",
                            &utime, &stime) == 2)
            total += (double)(utime + stime) / (double)ticks;
    }
    return total;
}

static void die(const char *what) {
    fprintf(stderr, "storm_client: %s\n", what);
    ERR_print_errors_fp(stderr);
    exit(2);
}

static void load_identity(identity *id, const char *cert_file, const char *key_file) {
    FILE *f = fopen(cert_file, "r");
    if (!f) die(cert_file);
    id->cert = PEM_read_X509(f, NULL, NULL, NULL);
    if (!id->cert) die(cert_file);
    id->chain = sk_X509_new_null();
    X509 *extra;
    while ((extra = PEM_read_X509(f, NULL, NULL, NULL)) != NULL) sk_X509_push(id->chain, extra);
    ERR_clear_error();
    fclose(f);
    f = fopen(key_file, "r");
    if (!f) die(key_file);
    id->key = PEM_read_PrivateKey(f, NULL, NULL, NULL);
    if (!id->key) die(key_file);
    fclose(f);
}

static void read_plan(const char *path) {
    FILE *f = fopen(path, "r");
    if (!f) die(path);
    char line[8400], a[4100], b[4100];
    int capacity = 1024;
    plan.devices = calloc((size_t)capacity, sizeof(identity));
    while (fgets(line, sizeof line, f)) {
        char name[32];
        if (sscanf(line, "%31s", name) != 1) continue;
        if (strcmp(name, "device") == 0) {
            if (sscanf(line, "%*s %4095s %4095s", a, b) != 2) die("a device line needs CERT KEY");
            if (plan.count == capacity) {
                capacity *= 2;
                plan.devices = realloc(plan.devices, (size_t)capacity * sizeof(identity));
                if (!plan.devices) die("out of memory");
            }
            load_identity(&plan.devices[plan.count++], a, b);
        } else if (strcmp(name, "port") == 0) sscanf(line, "%*s %d", &plan.port);
        else if (strcmp(name, "ca") == 0) sscanf(line, "%*s %4095s", plan.ca);
        else if (strcmp(name, "mode") == 0) sscanf(line, "%*s %15s", plan.mode);
        else if (strcmp(name, "rate") == 0) sscanf(line, "%*s %lf", &plan.rate);
        else if (strcmp(name, "seconds") == 0) sscanf(line, "%*s %lf", &plan.seconds);
        else if (strcmp(name, "timeout") == 0) sscanf(line, "%*s %lf", &plan.timeout);
        else if (strcmp(name, "retry_scale") == 0) sscanf(line, "%*s %lf", &plan.retry_scale);
        else if (strcmp(name, "concurrency") == 0) sscanf(line, "%*s %d", &plan.concurrency);
        else if (strcmp(name, "requests_per_connection") == 0)
            sscanf(line, "%*s %d", &plan.requests_per_connection);
        else if (strcmp(name, "resume") == 0) sscanf(line, "%*s %d", &plan.resume);
        else if (strcmp(name, "warmup") == 0) sscanf(line, "%*s %d", &plan.warmup);
        else if (strcmp(name, "server_pid") == 0 && plan.server_pid_count < 16)
            sscanf(line, "%*s %d", &plan.server_pids[plan.server_pid_count++]);
        else die("unknown plan line");
    }
    fclose(f);
    if (plan.count == 0 || plan.port == 0 || !plan.ca[0]) die("the plan needs port, ca and devices");
}

static void watch(conn *c, uint32_t events, int op) {
    struct epoll_event e = {.events = events, .data.ptr = c};
    if (epoll_ctl(epoll_fd, op, c->fd, &e) != 0) die("epoll_ctl");
}

/* The mode's handler for a finished check-in: its device, outcome and Retry-After. */
static void (*on_finish)(conn *c, const char *outcome, double retry_after);

static void finish(conn *c, const char *outcome, double retry_after) {
    if (c->state == CLOSED || c->state == FREE) return;
    on_finish(c, outcome, retry_after);
    if (c->ssl) SSL_free(c->ssl);
    c->ssl = NULL;
    close(c->fd);
    c->state = CLOSED; /* released after this batch of events: none may still name it */
    active--;
}

static const char *errno_name(int e) {
    switch (e) {
    case ECONNREFUSED: return "connection_error:ConnectionRefusedError";
    case ECONNRESET: return "connection_error:ConnectionResetError";
    case EPIPE: return "connection_error:BrokenPipeError";
    default: return "connection_error:OSError";
    }
}

static void start(int device) {
    conn *c = free_list;
    if (!c) die("no free connection slot");
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    if (fd < 0) {
        /* As a device would: this attempt fails; counted like any other failure. */
        conn failed = {.fd = -1, .state = CONNECTING, .device = device, .started = now()};
        on_finish(&failed, errno_name(errno), -1);
        return;
    }
    free_list = c->next_free;
    if (c - pool >= pool_used) pool_used = (int)(c - pool) + 1;
    memset(c, 0, sizeof *c);
    c->fd = fd;
    c->device = device;
    c->started = now();
    c->deadline = c->started + plan.timeout;
    c->left = plan.requests_per_connection > 1 ? plan.requests_per_connection : 1;
    c->state = CONNECTING;
    active++;
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    struct sockaddr_in to = {.sin_family = AF_INET, .sin_port = htons((uint16_t)plan.port)};
    to.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&to, sizeof to) != 0 && errno != EINPROGRESS) {
        int e = errno;
        watch(c, EPOLLOUT, EPOLL_CTL_ADD);
        finish(c, errno_name(e), -1);
        return;
    }
    watch(c, EPOLLOUT, EPOLL_CTL_ADD);
}

/* The size of the whole answer once its head is in (head and Content-Length), else 0. */
static size_t answer_size(const conn *c) {
    const char *end = strstr(c->head, "\r\n\r\n");
    if (!end) return 0;
    size_t body = 0;
    for (const char *line = strstr(c->head, "\r\n"); line && line < end; line = strstr(line + 2, "\r\n"))
        if (strncasecmp(line + 2, "content-length:", 15) == 0) body = (size_t)atol(line + 17);
    return (size_t)(end + 4 - c->head) + body;
}

/* Keep the connection's newest session for its device's next connection. */
static void keep_session(conn *c) {
    identity *id = &plan.devices[c->device];
    SSL_SESSION *session = SSL_get1_session(c->ssl);
    if (session && SSL_SESSION_is_resumable(session)) {
        if (id->session) SSL_SESSION_free(id->session);
        id->session = session;
    } else if (session) SSL_SESSION_free(session);
}

/* OpenSSL's word that a ticket arrived (client session cache on, kept by nobody). */
static int ticket_arrived(SSL *ssl, SSL_SESSION *session) {
    (void)session;
    conn *c = SSL_get_app_data(ssl);
    if (c) c->ticket = 1;
    return 0; /* OpenSSL keeps ownership */
}

/* A whole answer: counted; then the next request on this connection, or the end of it. */
static void answered(conn *c) {
    char status[4] = "";
    double retry_after = -1;
    if (c->got < 12 || strncmp(c->head, "HTTP/1.", 7) != 0) {
        finish(c, "connection_error:BadAnswer", -1);
        return;
    }
    memcpy(status, c->head + 9, 3);
    for (char *line = strstr(c->head, "\r\n"); line; line = strstr(line + 2, "\r\n")) {
        if (strncasecmp(line + 2, "retry-after:", 12) == 0) retry_after = atof(line + 14);
        if (strncmp(line, "\r\n\r\n", 4) == 0) break;
    }
    if (plan.resume) keep_session(c); /* the tickets came with the answer */
    if (--c->left <= 0 || strcmp(status, "200") != 0) {
        /* Closed properly (close_notify), as a device does: OpenSSL spoils the session of
           a connection freed without it, and the device could not resume. */
        SSL_shutdown(c->ssl);
        finish(c, status, retry_after);
        return;
    }
    on_finish(c, status, retry_after);
    c->started = now();
    c->deadline = c->started + plan.timeout;
    c->sent = c->got = c->answer_size = 0;
    c->head[0] = 0;
    c->state = WRITING;
}

/* Move a connection as far as it can go without blocking. */
static void step(conn *c) {
    int r, e;
    switch (c->state) {
    case CONNECTING: {
        int error = 0;
        socklen_t size = sizeof error;
        getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &error, &size);
        if (error) {
            finish(c, errno_name(error), -1);
            return;
        }
        c->ssl = SSL_new(context);
        SSL_use_certificate(c->ssl, plan.devices[c->device].cert);
        SSL_use_PrivateKey(c->ssl, plan.devices[c->device].key);
        SSL_set1_chain(c->ssl, plan.devices[c->device].chain);
        SSL_set_tlsext_host_name(c->ssl, "localhost");
        SSL_set1_host(c->ssl, "localhost");
        SSL_set_fd(c->ssl, c->fd);
        SSL_set_app_data(c->ssl, c);
        SSL_set_connect_state(c->ssl);
        if (plan.resume && plan.devices[c->device].session) {
            SSL_set_session(c->ssl, plan.devices[c->device].session);
        }
        c->state = HANDSHAKE;
    }
    /* fall through */
    case HANDSHAKE:
        r = SSL_do_handshake(c->ssl);
        if (r != 1) break;
        if (SSL_session_reused(c->ssl)) resumed_handshakes++;
        else full_handshakes++;
        if (plan.requests_per_connection == 0) {
            c->state = TICKET;
            step(c);
            return;
        }
        c->state = WRITING;
    /* fall through */
    case WRITING: {
        /* One request per connection says Connection: close; more keep it alive. */
        const char *text = plan.requests_per_connection > 1 ? kept_request : request;
        size_t size = plan.requests_per_connection > 1 ? kept_request_len : request_len;
        while (c->sent < size) {
            size_t n = 0;
            r = SSL_write_ex(c->ssl, text + c->sent, size - c->sent, &n);
            if (r != 1) goto blocked;
            c->sent += n;
        }
        c->state = READING;
    }
    /* fall through */
    case READING:
        for (;;) {
            char scratch[4096];
            size_t n = 0;
            r = SSL_read_ex(c->ssl, scratch, sizeof scratch, &n);
            if (r != 1) break;
            size_t room = sizeof c->head - 1 - c->got;
            size_t keep = n < room ? n : room;
            memcpy(c->head + c->got, scratch, keep);
            c->got += keep;
            c->head[c->got] = 0;
            if (!c->answer_size) c->answer_size = answer_size(c);
            if (c->answer_size && c->got >= c->answer_size) {
                answered(c);
                if (c->state != WRITING) return;
                step(c); /* the next request on this kept-alive connection */
                return;
            }
        }
        e = SSL_get_error(c->ssl, r);
        if (e == SSL_ERROR_WANT_READ) {
            watch(c, EPOLLIN, EPOLL_CTL_MOD);
            return;
        }
        /* The server closed after its answer (Connection: close): the answer is whole. */
        if (strstr(c->head, "\r\n\r\n")) answered(c);
        else finish(c, "connection_error:SSLError", -1);
        return;
    case TICKET:
        /* Handshakes alone (requests_per_connection 0): no request; the connection ends
           once the server's ticket is in, as it would after a device's check-in. */
        for (;;) {
            char scratch[256];
            size_t n = 0;
            r = SSL_read_ex(c->ssl, scratch, sizeof scratch, &n);
            if (r != 1) break;
        }
        if (c->ticket) {
            if (plan.resume) keep_session(c);
            SSL_shutdown(c->ssl);
            finish(c, "handshake", -1);
            return;
        }
        e = SSL_get_error(c->ssl, r);
        if (e == SSL_ERROR_WANT_READ) watch(c, EPOLLIN, EPOLL_CTL_MOD);
        else finish(c, "connection_error:SSLError", -1);
        return;
    default:
        return;
    }
blocked:
    e = SSL_get_error(c->ssl, r);
    if (e == SSL_ERROR_WANT_READ) watch(c, EPOLLIN, EPOLL_CTL_MOD);
    else if (e == SSL_ERROR_WANT_WRITE) watch(c, EPOLLOUT, EPOLL_CTL_MOD);
    else if (e == SSL_ERROR_SYSCALL && errno) finish(c, errno_name(errno), -1);
    else finish(c, "connection_error:SSLError", -1);
}

/* One pass of the loop: events, deadlines, then release what closed. */
static void pump(double until) {
    struct epoll_event events[512];
    double wait = until - now();
    int ms = wait <= 0 ? 0 : (wait > 0.05 ? 50 : (int)(wait * 1000) + 1);
    int n = epoll_wait(epoll_fd, events, 512, ms);
    for (int i = 0; i < n; i++) {
        conn *c = events[i].data.ptr;
        if (c->state == CLOSED || c->state == FREE) continue;
        ERR_clear_error();
        errno = 0;
        step(c);
    }
    double t = now();
    static double last_sweep;
    int sweep = t - last_sweep > 0.05; /* deadlines are checked to a twentieth of a second */
    if (sweep) last_sweep = t;
    for (int i = 0; i < pool_used; i++) {
        conn *c = &pool[i];
        if (sweep && c->state != FREE && c->state != CLOSED && t > c->deadline)
            finish(c, "timeout", -1);
        if (c->state == CLOSED) {
            c->state = FREE;
            c->next_free = free_list;
            free_list = c;
        }
    }
}

/* ---- latencies and the JSON answer ---- */

static double *latencies;
static long latency_count, latency_room;

static void record_latency(double seconds) {
    if (latency_count == latency_room) {
        latency_room = latency_room ? 2 * latency_room : 65536;
        latencies = realloc(latencies, (size_t)latency_room * sizeof(double));
        if (!latencies) die("out of memory");
    }
    latencies[latency_count++] = seconds;
}

static int by_value(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double percentile(double *values, long n, double share) {
    if (n == 0) return -1;
    long i = (long)((double)n * share) - 1;
    if (i < 0) i = 0;
    return values[i];
}

static void print_outcomes(const char *field) {
    printf("\"%s\": {", field);
    for (int i = 0; i < outcome_kinds; i++)
        printf("%s\"%s\": %ld", i ? ", " : "", outcomes[i].name, outcomes[i].count);
    printf("}");
}

static void print_ms(const char *field, double seconds) {
    if (seconds < 0) printf(", \"%s\": null", field);
    else printf(", \"%s\": %.3f", field, seconds * 1000);
}

/* ---- storm ---- */

static wake *wakes; /* a binary heap on `at` */
static long wake_count;
static int *ready, ready_head, ready_tail; /* a ring of devices due to try */
static int *failures;
static long checked_in;
static double storm_started;
static double *done_at;

static void push_wake(double at, int device) {
    long i = wake_count++;
    while (i > 0 && wakes[(i - 1) / 2].at > at) {
        wakes[i] = wakes[(i - 1) / 2];
        i = (i - 1) / 2;
    }
    wakes[i] = (wake){at, device};
}

static wake pop_wake(void) {
    wake top = wakes[0], last = wakes[--wake_count];
    long i = 0;
    for (;;) {
        long child = 2 * i + 1;
        if (child >= wake_count) break;
        if (child + 1 < wake_count && wakes[child + 1].at < wakes[child].at) child++;
        if (wakes[child].at >= last.at) break;
        wakes[i] = wakes[child];
        i = child;
    }
    wakes[i] = last;
    return top;
}

static double uniform(double low, double high) {
    return low + (high - low) * ((double)random() / (double)RAND_MAX);
}

/* homing.agent.pacing.next_delay after `failures` failures (the interval does not matter). */
static double backoff(int count_of_failures) {
    double base = 30.0;
    for (int i = 1; i < count_of_failures && base < 6 * 3600.0; i++) base *= 2;
    if (base > 6 * 3600.0) base = 6 * 3600.0;
    return base * uniform(0.5, 1.5);
}

static void storm_finished(conn *c, const char *outcome, double retry_after) {
    count(outcome);
    if (strcmp(outcome, "200") == 0) {
        done_at[checked_in++] = now() - storm_started;
        return;
    }
    int f = ++failures[c->device];
    double delay = retry_after >= 0 ? retry_after : backoff(f);
    push_wake(now() + delay * plan.retry_scale, c->device);
}

static void storm(void) {
    int n = plan.count;
    wakes = calloc((size_t)n, sizeof(wake));
    ready = calloc((size_t)n + 1, sizeof(int));
    failures = calloc((size_t)n, sizeof(int));
    done_at = calloc((size_t)n, sizeof(double));
    for (int i = 0; i < n; i++) ready[ready_tail++] = i;
    on_finish = storm_finished;
    storm_started = now();
    while (checked_in < n) {
        while (wake_count && wakes[0].at <= now()) {
            ready[ready_tail] = pop_wake().device;
            ready_tail = (ready_tail + 1) % (n + 1);
        }
        while (active < plan.concurrency && ready_head != ready_tail) {
            int d = ready[ready_head];
            ready_head = (ready_head + 1) % (n + 1);
            start(d);
        }
        pump(wake_count ? wakes[0].at : now() + 0.05);
    }
    long attempts = 0, errors = 0;
    for (int i = 0; i < outcome_kinds; i++) {
        attempts += outcomes[i].count;
        if (outcomes[i].name[0] == '5' && strcmp(outcomes[i].name, "503") != 0)
            errors += outcomes[i].count;
    }
    qsort(done_at, (size_t)n, sizeof(double), by_value);
    printf("{\"devices\": %d, \"seconds_until_all\": %.3f, \"p50_s\": %.3f, \"p99_s\": %.3f, ",
           n, done_at[n - 1], done_at[n / 2], percentile(done_at, n, 0.99));
    print_outcomes("attempts");
    printf(", \"attempt_count\": %ld, \"server_errors_5xx\": %ld, \"client_cpu_s\": %.3f}\n",
           attempts, errors, cpu());
}

/* ---- closed loop ---- */

static long turn;
static double closed_started;

static void closed_finished(conn *c, const char *outcome, double retry_after) {
    (void)retry_after;
    count(outcome);
    if (strcmp(outcome, "200") == 0 || strcmp(outcome, "handshake") == 0)
        record_latency(now() - c->started);
}

static void closed(void) {
    on_finish = closed_finished;
    if (plan.warmup) {
        /* Every device once before the clock starts (with `resume`: each then holds a ticket). */
        long next = 0;
        for (;;) {
            while (next < plan.count && active < plan.concurrency) start((int)next++);
            if (next >= plan.count && active == 0) break;
            pump(now() + 0.05);
        }
        outcome_kinds = 0;
        latency_count = 0;
        full_handshakes = resumed_handshakes = 0;
        cpu_at_start += cpu();
    }
    double server_at_start = server_cpu();
    closed_started = now();
    double end = closed_started + plan.seconds;
    for (;;) {
        while (now() < end && active < plan.concurrency) start((int)(turn++ % plan.count));
        if (now() >= end && active == 0) break;
        pump(now() + 0.05);
    }
    double elapsed = now() - closed_started;
    qsort(latencies, (size_t)latency_count, sizeof(double), by_value);
    printf("{\"concurrency\": %d, \"rate_per_s\": %.3f, ", plan.concurrency,
           (double)(counted("200") + counted("handshake")) / elapsed);
    print_outcomes("outcomes");
    print_ms("p50_ms", percentile(latencies, latency_count, 0.5));
    print_ms("p99_ms", percentile(latencies, latency_count, 0.99));
    printf(", \"handshakes\": {\"full\": %ld, \"resumed\": %ld}", full_handshakes,
           resumed_handshakes);
    if (plan.server_pid_count) printf(", \"server_cpu_s\": %.3f", server_cpu() - server_at_start);
    printf(", \"client_cpu_s\": %.3f}\n", cpu());
}

/* ---- open-loop arrivals ---- */

static double last_answer;

static void rate_finished(conn *c, const char *outcome, double retry_after) {
    (void)retry_after;
    count(outcome);
    if (strcmp(outcome, "200") == 0) {
        last_answer = now();
        record_latency(last_answer - c->started);
    }
}

static void rate(void) {
    on_finish = rate_finished;
    long total = (long)(plan.rate * plan.seconds), sent = 0;
    double started = now();
    last_answer = started;
    while (sent < total || active > 0) {
        double t = now();
        while (sent < total && started + (double)sent / plan.rate <= t) {
            start((int)(sent % plan.count));
            sent++;
        }
        pump(sent < total ? started + (double)sent / plan.rate : t + 0.05);
    }
    double elapsed = (last_answer > started + plan.seconds ? last_answer : started + plan.seconds) -
                     started;
    qsort(latencies, (size_t)latency_count, sizeof(double), by_value);
    printf("{\"offered_per_s\": %.3f, \"offered\": %ld, \"goodput_per_s\": %.3f, ", plan.rate,
           total, (double)counted("200") / elapsed);
    print_outcomes("outcomes");
    print_ms("p50_ms", percentile(latencies, latency_count, 0.5));
    print_ms("p99_ms", percentile(latencies, latency_count, 0.99));
    printf(", \"client_cpu_s\": %.3f}\n", cpu());
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: storm_client PLAN\n");
        return 2;
    }
    read_plan(argv[1]);
    struct rlimit files;
    getrlimit(RLIMIT_NOFILE, &files);
    files.rlim_cur = files.rlim_max;
    setrlimit(RLIMIT_NOFILE, &files);
    pool_size = (int)(files.rlim_cur > 70000 ? 65536 : files.rlim_cur - 64);
    pool = calloc((size_t)pool_size, sizeof(conn));
    for (int i = pool_size - 1; i >= 0; i--) {
        pool[i].next_free = free_list;
        free_list = &pool[i];
    }
    context = SSL_CTX_new(TLS_client_method());
    if (!context) die("SSL_CTX_new");
    SSL_CTX_set_min_proto_version(context, TLS1_3_VERSION);
    /* The client "cache" is only the callback that says a ticket arrived. */
    SSL_CTX_set_session_cache_mode(context, SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL);
    SSL_CTX_sess_set_new_cb(context, ticket_arrived);
    if (SSL_CTX_load_verify_locations(context, plan.ca, NULL) != 1) die(plan.ca);
    SSL_CTX_set_verify(context, SSL_VERIFY_PEER, NULL);
    static const char body[] =
        "{\"firmware_version\":\"1.0\",\"trust\":{\"root\":1,\"timestamp\":1,\"targets\":1}}";
    request_len = (size_t)snprintf(request, sizeof request,
                                   "POST /v1/device/checkin HTTP/1.1\r\nHost: localhost\r\n"
                                   "Content-Type: application/json\r\nConnection: close\r\n"
                                   "Content-Length: %zu\r\n\r\n%s",
                                   strlen(body), body);
    kept_request_len = (size_t)snprintf(kept_request, sizeof kept_request,
                                        "POST /v1/device/checkin HTTP/1.1\r\nHost: localhost\r\n"
                                        "Content-Type: application/json\r\n"
                                        "Content-Length: %zu\r\n\r\n%s",
                                        strlen(body), body);
    epoll_fd = epoll_create1(0);
    srandom((unsigned)time(NULL));
    cpu_at_start = cpu();
    if (strcmp(plan.mode, "storm") == 0) storm();
    else if (strcmp(plan.mode, "closed") == 0) closed();
    else if (strcmp(plan.mode, "rate") == 0) rate();
    else die("mode must be storm, closed or rate");
    return 0;
}
