/* fuzz_settings.c: libFuzzer harness for the plug-in's remembered settings
 * (plugin/core.c: core_settings_deserialize, the GLib key file GIMP keeps
 * between runs) and for the parameters text it reads settings back from
 * (core_settings_from_parameters). Any text reads without a crash; what it
 * reads writes back and reads again to the same settings; the checks before a
 * run take whatever was read. Built only where libgimp 2.10 is. */
#include <string.h>

#include "../../plugin/core.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    gchar *text = g_strndup((const gchar *)data, size);
    CoreSettings s, again;
    core_settings_default(&s);
    core_settings_deserialize(&s, text);
    gchar *once = core_settings_serialize(&s);
    core_settings_default(&again);
    core_settings_deserialize(&again, once);
    gchar *twice = core_settings_serialize(&again);
    if (strcmp(once, twice) != 0)
        abort();
    for (int mode = CORE_TXT2IMG; mode <= CORE_IMG2IMG; mode++) {
        GError *error = NULL;
        if (!core_settings_validate(&s, (CoreMode)mode, &error) && (!error || !error->message[0]))
            abort();
        g_clear_error(&error);
        CoreSettings p = s;
        gchar *unused = NULL;
        core_settings_from_parameters(&p, (CoreMode)mode, text, &unused);
        g_free(unused);
    }
    g_free(once);
    g_free(twice);
    g_free(text);
    return 0;
}
