/* paths.c: where the engine and its front ends look for files nobody named:
 * the default model, the LoRA folder, the CLIP vocabulary. One home for the
 * search orders, so the CLI and both GIMP plug-ins find the same files. The
 * user's own data folder is $XDG_DATA_HOME/diffuse (else
 * ~/.local/share/diffuse), where ./install.sh puts what it fetches. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "internal.h"

bool diffuse_path_exists(const char *path)
{
    struct stat st;
    return path && *path && stat(path, &st) == 0;
}

void diffuse_data_path(char *out, size_t size, const char *what)
{
    const char *xdg = getenv("XDG_DATA_HOME"), *home = getenv("HOME");
    if (xdg && *xdg)
        snprintf(out, size, "%s/diffuse/%s", xdg, what);
    else
        snprintf(out, size, "%s/.local/share/diffuse/%s", home ? home : "", what);
}

diffuse_status diffuse_default_model_path(const char *const *beside, char *path, size_t size,
                                          char *err, size_t err_size)
{
    const char *env = getenv("DIFFUSE_DEFAULT_MODEL");
    if (env && *env) { /* the user's choice, whether or not it is there: loading says */
        snprintf(path, size, "%s", env);
        return DIFFUSE_OK;
    }
    char looked[1024] = "";
    size_t used = 0;
    for (int i = 0; beside && beside[i]; i++) {
        if (diffuse_path_exists(beside[i])) {
            snprintf(path, size, "%s", beside[i]);
            return DIFFUSE_OK;
        }
        if (used < sizeof looked)
            used += (size_t)snprintf(looked + used, sizeof looked - used, "%s, ", beside[i]);
    }
    char user[4096];
    diffuse_data_path(user, sizeof user, "models/default");
    if (diffuse_path_exists(user)) {
        snprintf(path, size, "%s", user);
        return DIFFUSE_OK;
    }
    if (err && err_size)
        snprintf(err, err_size,
                 "no default model installed (looked in %s%s, and DIFFUSE_DEFAULT_MODEL is not "
                 "set); choose a model file or folder",
                 looked, user);
    return DIFFUSE_ERR_IO;
}

void diffuse_default_lora_dir(char *path, size_t size)
{
    const char *env = getenv("DIFFUSE_LORA_DIR");
    if (env && *env)
        snprintf(path, size, "%s", env);
    else
        diffuse_data_path(path, size, "loras");
}
