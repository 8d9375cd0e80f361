/* tests/unit/test_metrics.c - the registry and its Prometheus text exposition. */
#include "server/metrics.h"

#include "tests/check_main.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static char *render(struct metrics *m)
{
    size_t n = 0;
    char *text = metrics_render(m, &n);
    ck_assert_ptr_nonnull(text);
    ck_assert_uint_eq(strlen(text), n);
    return text;
}

#define ASSERT_HAS(text, needle) \
    ck_assert_msg(strstr((text), (needle)), "missing:\n%s\n--- in ---\n%s", (needle), (text))

START_TEST(test_metrics_counter_renders_help_type_and_labelled_series)
{
    struct metrics *m = metrics_new();
    struct metric *c = metrics_counter(m, "ralud_requests_total", "Requests.", "status");
    metrics_add(c, "200", 1);
    metrics_add(c, "200", 1);
    metrics_add(c, "404", 1);
    char *t = render(m);
    ASSERT_HAS(t, "# HELP ralud_requests_total Requests.\n# TYPE ralud_requests_total counter\n");
    ASSERT_HAS(t, "ralud_requests_total{status=\"200\"} 2\n");
    ASSERT_HAS(t, "ralud_requests_total{status=\"404\"} 1\n");
    ck_assert_double_eq(metrics_value(c, "200"), 2);
    free(t);
    metrics_free(m);
}
END_TEST

START_TEST(test_metrics_unlabelled_families_expose_zero_before_use)
{
    struct metrics *m = metrics_new();
    metrics_counter(m, "c_total", "c", NULL);
    double b[] = {1, 2};
    metrics_histogram(m, "h_seconds", "h", NULL, b, 2);
    char *t = render(m);
    ASSERT_HAS(t, "\nc_total 0\n");
    ASSERT_HAS(t, "h_seconds_bucket{le=\"+Inf\"} 0\nh_seconds_sum 0\nh_seconds_count 0\n");
    free(t);
    metrics_free(m);
}
END_TEST

START_TEST(test_metrics_histogram_buckets_are_cumulative)
{
    struct metrics *m = metrics_new();
    double bounds[] = {0.05, 0.1, 1, 5};
    struct metric *h = metrics_histogram(m, "d_seconds", "d", "route", bounds, 4);
    metrics_observe(h, "gen", 0.07);
    metrics_observe(h, "gen", 3);
    metrics_observe(h, "gen", 1000);
    metrics_observe(h, "gen", 0.05); /* on a bound: le is inclusive */
    char *t = render(m);
    ASSERT_HAS(t, "d_seconds_bucket{route=\"gen\",le=\"0.05\"} 1\n"
                  "d_seconds_bucket{route=\"gen\",le=\"0.1\"} 2\n"
                  "d_seconds_bucket{route=\"gen\",le=\"1\"} 2\n"
                  "d_seconds_bucket{route=\"gen\",le=\"5\"} 3\n"
                  "d_seconds_bucket{route=\"gen\",le=\"+Inf\"} 4\n"
                  "d_seconds_sum{route=\"gen\"} 1003.12\n"
                  "d_seconds_count{route=\"gen\"} 4\n");
    ck_assert_double_eq(metrics_value(h, "gen"), 4);
    free(t);
    metrics_free(m);
}
END_TEST

START_TEST(test_metrics_label_values_are_escaped)
{
    struct metrics *m = metrics_new();
    struct metric *c = metrics_counter(m, "x_total", "line1\nline2 \\ end", "k");
    metrics_add(c, "a\"b\\c\nd", 1);
    char *t = render(m);
    ASSERT_HAS(t, "# HELP x_total line1\\nline2 \\\\ end\n");
    ASSERT_HAS(t, "x_total{k=\"a\\\"b\\\\c\\nd\"} 1\n");
    free(t);
    metrics_free(m);
}
END_TEST

START_TEST(test_metrics_label_cardinality_is_capped_into_other)
{
    struct metrics *m = metrics_new();
    struct metric *c = metrics_counter(m, "y_total", "y", "k");
    char v[16];
    for (int i = 0; i < 100; i++) {
        snprintf(v, sizeof v, "v%d", i);
        metrics_add(c, v, 1);
    }
    char *t = render(m);
    int lines = 0;
    for (const char *p = t; (p = strstr(p, "y_total{")); p++)
        lines++;
    ck_assert_int_eq(lines, METRICS_MAX_SERIES);
    ck_assert_double_eq(metrics_value(c, "other"), 100 - (METRICS_MAX_SERIES - 1));
    free(t);
    metrics_free(m);
}
END_TEST

static double forty_two(void *ctx)
{
    (void)ctx;
    return 42;
}

START_TEST(test_metrics_gauge_callback_and_info_render)
{
    struct metrics *m = metrics_new();
    metrics_info(m, "b_info", "b", "version=\"1.2\",backend=\"none\"");
    metrics_gauge_cb(m, "q_depth", "q", forty_two, NULL);
    struct metric *g = metrics_gauge(m, "g", "g", NULL);
    metrics_set(g, NULL, 2.5);
    char *t = render(m);
    ASSERT_HAS(t, "# TYPE b_info gauge\nb_info{version=\"1.2\",backend=\"none\"} 1\n");
    ASSERT_HAS(t, "# TYPE q_depth gauge\nq_depth 42\n");
    ASSERT_HAS(t, "\ng 2.5\n");
    free(t);
    metrics_free(m);
}
END_TEST

static Suite *metrics_suite(void)
{
    Suite *s = suite_create("metrics");
    TCase *tc = tcase_create("render");

    tcase_add_test(tc, test_metrics_counter_renders_help_type_and_labelled_series);
    tcase_add_test(tc, test_metrics_unlabelled_families_expose_zero_before_use);
    tcase_add_test(tc, test_metrics_histogram_buckets_are_cumulative);
    tcase_add_test(tc, test_metrics_label_values_are_escaped);
    tcase_add_test(tc, test_metrics_label_cardinality_is_capped_into_other);
    tcase_add_test(tc, test_metrics_gauge_callback_and_info_render);
    tcase_set_timeout(tc, 10);
    suite_add_tcase(s, tc);
    return s;
}

CHECK_MAIN(metrics_suite)
