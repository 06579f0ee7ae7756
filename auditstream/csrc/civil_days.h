/* Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's civil_from_days),
 * shared by the assembler's @timestamp (assembler/csrc/ecs.c) and the tree keeper's
 * iso_ms (treekeeper/csrc/enrich.c). Any int64 day count whose year fits in int64. */
#ifndef AUDITSTREAM_CIVIL_DAYS_H
#define AUDITSTREAM_CIVIL_DAYS_H

#include <stdint.h>

static inline void civil_from_days(int64_t z, int64_t *year, int *month, int *day)
{
    z += 719468;
    int64_t era = (z >= 0 ? z : z - 146096) / 146097;
    int64_t doe = z - era * 146097;
    int64_t yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    int64_t doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    int64_t mp = (5 * doy + 2) / 153;
    *day = (int)(doy - (153 * mp + 2) / 5 + 1);
    *month = (int)(mp < 10 ? mp + 3 : mp - 9);
    *year = yoe + era * 400 + (*month <= 2);
}

#endif
