/* tests/fuzz/fuzz_driver.c - replay inputs through LLVMFuzzerTestOneInput.
 *
 * main() for compilers without libFuzzer: every argument is a file or a
 * directory of files, each fed once to the entry point. CTest runs it over the
 * checked-in seed corpus, so the corpus stays a regression test in every
 * build (and under the sanitizer presets). */
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int run_file(const char *path)
{
    struct stat st;
    FILE *fp = fopen(path, "rb");
    if (!fp || fstat(fileno(fp), &st) != 0 || st.st_size < 0) {
        fprintf(stderr, "%s: cannot open\n", path);
        if (fp)
            fclose(fp);
        return -1;
    }
    /* An exact-size buffer, as libFuzzer passes it, so ASan sees any overread. */
    size_t n = (size_t)st.st_size;
    uint8_t *buf = malloc(n ? n : 1);
    if (!buf || fread(buf, 1, n, fp) != n) {
        fprintf(stderr, "%s: cannot read\n", path);
        free(buf);
        fclose(fp);
        return -1;
    }
    fclose(fp);
    LLVMFuzzerTestOneInput(buf, n);
    free(buf);
    return 0;
}

int main(int argc, char **argv)
{
    int ran = 0, bad = 0;
    for (int i = 1; i < argc; i++) {
        struct stat st;
        if (stat(argv[i], &st) != 0) {
            fprintf(stderr, "%s: not found\n", argv[i]);
            bad++;
            continue;
        }
        if (!S_ISDIR(st.st_mode)) {
            bad += run_file(argv[i]) != 0;
            ran++;
            continue;
        }
        DIR *d = opendir(argv[i]);
        struct dirent *de;
        while (d && (de = readdir(d))) {
            if (de->d_name[0] == '.')
                continue;
            char p[4096];
            snprintf(p, sizeof p, "%s/%s", argv[i], de->d_name);
            bad += run_file(p) != 0;
            ran++;
        }
        if (d)
            closedir(d);
    }
    printf("fuzz_driver: %d inputs, %d unreadable\n", ran, bad);
    return ran > 0 && bad == 0 ? 0 : 1;
}
