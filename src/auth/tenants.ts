/** The tenant every installation starts with (schema.sql creates it). */
export const DEFAULT_TENANT_ID = "00000000-0000-0000-0000-000000000001";
