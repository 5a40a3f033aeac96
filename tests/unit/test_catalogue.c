/* test_catalogue.c - unit tests of the event catalogue: known types, required
 * and optional fields, wrong types, unknown fields and types refused. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "core/catalogue.h"

static void expect(const char *type, json_t *data, sg_err want, const char *mention)
{
    char why[256] = "";
    sg_err e = catalogue_check(type, data, why, sizeof(why));
    json_decref(data);
    if (e != want)
        fail_msg("%s: got %d (%s), want %d", type, (int)e, why, (int)want);
    if (mention && strstr(why, mention) == NULL)
        fail_msg("reason \"%s\" does not mention \"%s\"", why, mention);
}

static void test_device_registered(void **state)
{
    (void)state;
    assert_non_null(catalogue_find("DeviceRegistered"));
    expect("DeviceRegistered", json_pack("{s:s, s:s}", "device_id", "d", "hardware", "h"), SG_OK,
           NULL);
    expect("DeviceRegistered",
           json_pack("{s:s, s:s, s:s}", "device_id", "d", "hardware", "h", "group", "g"), SG_OK,
           NULL);
    expect("DeviceRegistered", json_pack("{s:s}", "device_id", "d"), SG_EBADINPUT,
           "data.hardware is missing");
    expect("DeviceRegistered", json_pack("{s:s, s:i}", "device_id", "d", "hardware", 3),
           SG_EBADINPUT, "data.hardware is not a string");
    expect("DeviceRegistered",
           json_pack("{s:s, s:s, s:s}", "device_id", "d", "hardware", "h", "colour", "red"),
           SG_EBADINPUT, "does not name");
    expect("DeviceRegistered", json_pack("{s:n, s:s}", "device_id", "hardware", "h"), SG_EBADINPUT,
           "device_id");
    expect("DeviceRegistered", json_array(), SG_EBADINPUT, "not an object");
}

static void test_unknown(void **state)
{
    (void)state;
    assert_null(catalogue_find("NoSuchEvent"));
    assert_null(catalogue_find(NULL));
    expect("NoSuchEvent", json_object(), SG_EBADINPUT, "unknown event type");
    expect(NULL, json_object(), SG_EBADINPUT, "unknown event type");
}

static void test_json(void **state)
{
    (void)state;
    json_t *doc = catalogue_json();
    json_t *events = json_object_get(doc, "events");
    assert_true(json_is_array(events));
    assert_true(json_array_size(events) >= 1);
    json_t *first = json_array_get(events, 0);
    assert_string_equal(json_string_value(json_object_get(first, "type")), "DeviceRegistered");
    assert_int_equal(json_array_size(json_object_get(first, "fields")), 3);
    json_decref(doc);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_device_registered),
        cmocka_unit_test(test_unknown),
        cmocka_unit_test(test_json),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
